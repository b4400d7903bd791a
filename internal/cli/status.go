package cli

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

// Status is the answer of meshca status -o json.
type Status struct {
	CA         api.CA           `json:"ca"`
	Identities []api.Identity   `json:"identities"`
	Nodes      []api.Node       `json:"nodes"`
	Recent     []api.AuditEvent `json:"recent_audit"`
	Replicas   []api.Replica    `json:"replicas"`
}

func statusCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Summarise the CA, identities, nodes and recent audit records in a few lines",
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
			var st Status
			ctx := cmd.Context()
			for _, q := range []struct {
				path string
				out  any
			}{{api.PathCA, &st.CA}, {api.PathIdentities, &st.Identities}, {api.PathNodes, &st.Nodes}, {api.PathAudit + "?last=5", &st.Recent}} {
				if err := c.do(ctx, "GET", q.path, nil, q.out); err != nil {
					return err
				}
			}
			// A server that predates replicas has no list: leave it empty.
			if err := c.do(ctx, "GET", api.PathReplicas, nil, &st.Replicas); err != nil {
				st.Replicas = nil
			}
			if n := len(st.Recent); n > 5 {
				st.Recent = st.Recent[n-5:]
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), st)
			}
			writeStatus(cmd.OutOrStdout(), st, time.Now())
			return nil
		},
	}
}

func writeStatus(w io.Writer, st Status, now time.Time) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	rot := "no rotation"
	if r := st.CA.Rotation; r != nil {
		rot = fmt.Sprintf("%s rotation, phase %s (%s)", r.Kind, r.Phase, rotationProgress(r))
		if r.WaitingFor != "" {
			rot += ", waiting for " + esc(r.WaitingFor)
		}
	}
	fmt.Fprintf(tw, "CA\t%s, issuer %s expires in %s; %s\n", st.CA.TrustDomain, st.CA.Issuer.Serial, until(now, st.CA.Issuer.NotAfter), rot)
	if l := st.CA.Leader; l != nil {
		self := ""
		if l.Self {
			self = " (this replica)"
		}
		fmt.Fprintf(tw, "leader\t%s at %s%s\n", esc(l.ID), esc(l.Address), self)
	} else {
		fmt.Fprintf(tw, "leader\tnone elected\n")
	}
	active, revoked, expiring := 0, 0, ""
	var soonest time.Time
	for _, id := range st.Identities {
		if id.State != "active" {
			revoked++
			continue
		}
		active++
		if id.Cert != nil && (soonest.IsZero() || id.Cert.NotAfter.Before(soonest)) {
			soonest, expiring = id.Cert.NotAfter, id.Name
		}
	}
	line := fmt.Sprintf("%d active, %d revoked", active, revoked)
	if expiring != "" {
		line += fmt.Sprintf("; next to expire: %s in %s", esc(expiring), until(now, soonest))
	}
	fmt.Fprintf(tw, "identities\t%s\n", line)
	connected, nacks := 0, 0
	for _, n := range st.Nodes {
		if n.Connection.Connected {
			connected++
		}
		nacks += n.Connection.NACKs
	}
	fmt.Fprintf(tw, "nodes\t%d registered, %d connected, %d NACKs\n", len(st.Nodes), connected, nacks)
	for _, r := range st.Replicas {
		self := ""
		if r.Self {
			self = " (this one)"
		}
		nodes := ""
		switch n := r.Nodes; {
		case n == nil:
		case !n.Reported:
			nodes = "; its nodes not reported for this CA rotation yet"
		default:
			nodes = fmt.Sprintf("; %d node(s) connected, %d to acknowledge (reported %s)", n.Connected, n.Pending, n.At.UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(tw, "replica\t%s xDS %s, up since %s%s%s\n", esc(r.ID), esc(r.XDS), r.Since.UTC().Format(time.RFC3339), self, nodes)
	}
	for _, e := range st.Recent {
		fmt.Fprintf(tw, "audit\t#%d %s %s %s %s\n", e.Seq, e.Time.UTC().Format(time.RFC3339), esc(e.Action), esc(e.Outcome), dash(esc(e.Identity+e.Node)))
	}
	tw.Flush()
}

func until(now, t time.Time) string {
	d := t.Sub(now).Round(time.Second)
	if d < 0 {
		return "expired"
	}
	if d > 48*time.Hour {
		return fmt.Sprintf("%dd", int(d.Hours()/24))
	}
	return d.String()
}
