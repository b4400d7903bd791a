package cli

import (
	"encoding/json"
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
		Long: "Show the access logs proxies sent to meshca (access_log: true in the mesh file turns\n" +
			"them on). With -o json: a JSON array ([] when there is none); with --follow, one JSON\n" +
			"object per line as entries arrive.",
		Args: exactArgs(0, ""),
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
			// -o json: one JSON array ([] when there is nothing), or with
			// --follow one compact object per line as entries arrive.
			shown := []api.LogEntry{}
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
					if asJSON && !follow {
						shown = append(shown, e)
						continue
					}
					if asJSON {
						if err := json.NewEncoder(cmd.OutOrStdout()).Encode(e); err != nil {
							return err
						}
						continue
					}
					fmt.Fprintf(cmd.OutOrStdout(), "%s %s %s %s%s %d %s upstream=%s peer=%s\n", e.Time.UTC().Format(time.RFC3339Nano), esc(e.Node),
						dash(esc(e.Method)), esc(e.Authority), esc(e.Path), e.Status, dash(esc(e.Duration)), dash(esc(e.Upstream)), dash(esc(e.Peer)))
				}
				if !follow {
					if asJSON {
						return writeJSON(cmd.OutOrStdout(), shown)
					}
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
