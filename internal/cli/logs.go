package cli

import (
	"fmt"
	"net/url"
	"strconv"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

func logsCmd(g *globals) *cobra.Command {
	var (
		node   string
		follow bool
		limit  int
	)
	cmd := &cobra.Command{
		Use:   "logs [--node N] [--follow]",
		Short: "Show the access logs proxies sent to meshca (the mesh file turns them on)",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			asJSON, err := g.json()
			if err != nil {
				return err
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			last := map[string]uint64{} // node -> last seq shown
			for {
				q := url.Values{"limit": {strconv.Itoa(limit)}}
				if node != "" {
					q.Set("node", node)
					q.Set("after", strconv.FormatUint(last[node], 10))
				}
				var entries []api.LogEntry
				if err := c.do(cmd.Context(), "GET", api.PathLogs+"?"+q.Encode(), nil, &entries); err != nil {
					return err
				}
				for _, e := range entries {
					if e.Seq <= last[e.Node] {
						continue
					}
					last[e.Node] = e.Seq
					if asJSON {
						if err := writeJSON(cmd.OutOrStdout(), e); err != nil {
							return err
						}
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s %s%s %d %s upstream=%s peer=%s\n", e.Time.UTC().Format(time.RFC3339Nano), esc(e.Node),
						dash(esc(e.Method)), esc(e.Authority), esc(e.Path), e.Status, dash(esc(e.Duration)), dash(esc(e.Upstream)), dash(esc(e.Peer)))
				}
				if !follow {
					return nil
				}
				select {
				case <-cmd.Context().Done():
					return nil
				case <-time.After(time.Second):
				}
			}
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "only this node's entries")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new entries")
	cmd.Flags().IntVar(&limit, "limit", 100, "at most this many entries per request (up to 1000)")
	return cmd
}
