package cli

import (
	"fmt"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

func auditCmd(g *globals) *cobra.Command {
	cmd := group("audit", "Read the audit log")
	var after, limit uint64
	list := &cobra.Command{
		Use:   "list",
		Short: "List audit records, newest last",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var evs []api.AuditEvent
			path := fmt.Sprintf("%s?after=%d&limit=%d", api.PathAudit, after, limit)
			asJSON, err := g.call(cmd, "GET", path, nil, &evs)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), evs)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SEQ\tTIME\tACTION\tOUTCOME\tACTOR\tSUBJECT\tSERIAL\tDETAIL")
			for _, e := range evs {
				subject := e.Identity
				if e.Node != "" {
					subject = "node/" + e.Node
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.UTC().Format(time.RFC3339), esc(e.Action), esc(e.Outcome),
					dash(esc(e.Actor)), dash(esc(subject)), dash(esc(e.Serial)), esc(e.Detail))
			}
			return tw.Flush()
		},
	}
	list.Flags().Uint64Var(&after, "after", 0, "show records after this sequence number")
	list.Flags().Uint64Var(&limit, "limit", 0, "show at most this many records (0: all)")
	cmd.AddCommand(list)
	return cmd
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
