package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/authority"
)

func identityCmd(g *globals) *cobra.Command {
	cmd := group("identity", "Add and inspect service identities")
	cmd.AddCommand(identityAddCmd(g), identityListCmd(g), identityShowCmd(g), identityReissueCmd(g), revokeCmd(g, false))
	return cmd
}

func identityAddCmd(g *globals) *cobra.Command {
	var (
		dns   []string
		ttl   time.Duration
		admin bool
	)
	var from string
	cmd := &cobra.Command{
		Use:   "add NAME | add --from FILE",
		Short: "Register an identity (spiffe://<trust-domain>/NAME) and issue its first certificate",
		Long: "Registers one identity, or with --from FILE one per line of FILE (- for standard\n" +
			"input): NAME [dns=HOST,HOST] [ttl=DURATION] [admin]. Blank lines and # comments are\n" +
			"skipped. Progress goes to standard error; every line is tried, and the exit status is\n" +
			"non-zero when any failed.",
		Args: func(cmd *cobra.Command, args []string) error {
			if from != "" {
				return exactArgs(0, "")(cmd, args)
			}
			return exactArgs(1, "NAME")(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if from != "" {
				return addFromFile(cmd, g, from)
			}
			req := api.AddIdentityRequest{Name: args[0], DNSNames: dns, Admin: admin}
			if cmd.Flags().Changed("ttl") {
				req.TTL = ttl.String()
			}
			var id api.Identity
			asJSON, err := g.call(cmd, "POST", api.PathIdentities, req, &id)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), id)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "added %s (%s)\n", id.Name, id.SPIFFEID)
			if err := writeIdentity(cmd.OutOrStdout(), id); err != nil {
				return err
			}
			if id.Admin {
				fmt.Fprintf(cmd.OutOrStdout(), "admin credentials are made where they are used (the key never reaches meshca):\n  meshca cert issue %s --out DIR\n(or send a CSR made with openssl: POST %s/%s with {\"csr_pem\": ...})\n", id.Name, api.PathCerts, id.Name)
			}
			return nil
		},
	}
	cmd.Flags().StringSliceVar(&dns, "dns", nil, "DNS name to add as a SAN (repeat for more)")
	cmd.Flags().DurationVar(&ttl, "ttl", 0, fmt.Sprintf("certificate lifetime, %s to %s (default: the server's, %s unless configured)",
		authority.LeafTTL.Min, authority.LeafTTL.Max, authority.Default().Leaf))
	cmd.Flags().BoolVar(&admin, "admin-access", false, "allow certificates issued for this identity from a CSR (meshca cert issue) to call the admin API over mTLS; such an identity can never be assigned to a node")
	cmd.Flags().StringVar(&from, "from", "", "add the identities listed in FILE, one per line (- reads standard input)")
	return cmd
}

func identityListCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List identities with their current certificate",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var ids []api.Identity
			asJSON, err := g.call(cmd, "GET", api.PathIdentities, nil, &ids)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), ids)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tSTATE\tSERIAL\tNOT AFTER\tCERT")
			for _, id := range ids {
				serial, notAfter, certState := "-", "-", "none"
				if id.Cert != nil {
					serial, notAfter, certState = id.Cert.Serial, id.Cert.NotAfter.UTC().Format(time.RFC3339), id.Cert.State
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", esc(id.Name), esc(id.State), esc(serial), notAfter, esc(certState))
			}
			return tw.Flush()
		},
	}
}

func identityShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Show an identity: SPIFFE ID, current serial, validity, state",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var id api.Identity
			asJSON, err := g.call(cmd, "GET", api.PathIdentities+"/"+escapeName(args[0]), nil, &id)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), id)
			}
			return writeIdentity(cmd.OutOrStdout(), id)
		},
	}
}

func writeIdentity(w interface{ Write([]byte) (int, error) }, id api.Identity) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "name:\t%s\n", esc(id.Name))
	fmt.Fprintf(tw, "spiffe id:\t%s\n", esc(id.SPIFFEID))
	fmt.Fprintf(tw, "state:\t%s\n", id.State)
	if len(id.DNSNames) > 0 {
		fmt.Fprintf(tw, "dns names:\t%s\n", esc(strings.Join(id.DNSNames, ", ")))
	}
	fmt.Fprintf(tw, "ttl:\t%s\n", id.TTL)
	if id.Admin {
		fmt.Fprintf(tw, "admin:\tyes\n")
	}
	if id.Cert != nil {
		fmt.Fprintf(tw, "serial:\t%s\n", id.Cert.Serial)
		fmt.Fprintf(tw, "not before:\t%s\n", id.Cert.NotBefore.UTC().Format(time.RFC3339))
		fmt.Fprintf(tw, "not after:\t%s\n", id.Cert.NotAfter.UTC().Format(time.RFC3339))
		fmt.Fprintf(tw, "certificate:\t%s\n", id.Cert.State)
		if id.Cert.RenewAt != nil {
			fmt.Fprintf(tw, "next renewal:\t%s\n", id.Cert.RenewAt.UTC().Format(time.RFC3339))
		} else {
			fmt.Fprintf(tw, "next renewal:\tnone (not renewed)\n")
		}
	}
	for _, h := range id.Holders {
		fmt.Fprintf(tw, "node %s:\tserial %s, %s, not after %s (its own key)\n", esc(h.Node), h.Cert.Serial, h.Cert.State, h.Cert.NotAfter.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func identityReissueCmd(g *globals) *cobra.Command {
	var all bool
	cmd := &cobra.Command{
		Use:   "reissue NAME | --all",
		Short: "Issue a new certificate for an identity (or all of them) and push it to every node that holds it",
		Long: "Issue a new key and certificate for an identity and push it to every node that holds it.\n" +
			"With --all, re-key every active identity at once, for example after a suspected key\n" +
			"compromise; progress is printed while it runs. Routine renewals need neither: meshca\n" +
			"renews every certificate before it expires.",
		RunE: func(cmd *cobra.Command, args []string) error {
			if all {
				if len(args) > 0 {
					return fmt.Errorf("%s takes NAME or --all, not both (usage: %s)", cmd.CommandPath(), cmd.UseLine())
				}
				return reissueAll(cmd, g)
			}
			if len(args) != 1 {
				return fmt.Errorf("%s needs NAME or --all (usage: %s)", cmd.CommandPath(), cmd.UseLine())
			}
			var id api.Identity
			asJSON, err := g.call(cmd, "POST", api.PathReissue+"/"+escapeName(args[0]), struct{}{}, &id)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), id)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "reissued %s\n", id.Name)
			return writeIdentity(cmd.OutOrStdout(), id)
		},
	}
	cmd.Flags().BoolVar(&all, "all", false, "re-key every active identity now")
	return cmd
}

// reissueAll runs POST /v1/reissue, printing progress on stderr and the
// outcome on stdout.
func reissueAll(cmd *cobra.Command, g *globals) error {
	asJSON, err := g.json()
	if err != nil {
		return err
	}
	c, err := g.client()
	if err != nil {
		return err
	}
	var final *api.ReissueProgress
	err = c.stream(cmd.Context(), "POST", api.PathReissue, api.ReissueAllRequest{All: true}, func(line []byte) error {
		var p api.ReissueProgress
		if err := json.Unmarshal(line, &p); err != nil {
			return fmt.Errorf("admin API sent a progress line this meshca does not understand: %w", err)
		}
		if p.Finished {
			final = &p
			return nil
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "re-keyed %d of %d identities (%d failed)\n", p.Reissued, p.Total, p.Failed)
		return nil
	})
	if err != nil {
		return err
	}
	if final == nil {
		return errors.New("the admin API stopped before reporting the outcome; meshca audit list shows what was re-keyed")
	}
	if asJSON {
		if err := writeJSON(cmd.OutOrStdout(), final); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(cmd.OutOrStdout(), "re-keyed %d of %d identities in %s (%d failed)\n", final.Reissued, final.Total,
			(time.Duration(final.ElapsedMS) * time.Millisecond).Round(time.Millisecond), final.Failed)
		for _, e := range final.Errors {
			fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", esc(e))
		}
	}
	switch {
	case final.Error != "":
		return fmt.Errorf("stopped early: %s", final.Error)
	case final.Failed > 0:
		return fmt.Errorf("%d identities were not re-keyed", final.Failed)
	}
	return nil
}

// revokeCmd is `identity revoke` and `node revoke`.
func revokeCmd(g *globals, node bool) *cobra.Command {
	var (
		reason string
		push   pushFlags
	)
	use, short := "revoke NAME [--reason R]", "Revoke an identity: stop issuing, withdraw its secret, push its serials in the CRL"
	if node {
		use, short = "revoke NODE [--reason R]", "Revoke a node: close its streams now, refuse it from then on, re-key every identity it held"
	}
	cmd := &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			path := api.PathRevoke + "/" + escapeName(args[0])
			if node {
				path = api.PathNodes + "/" + escapeName(args[0]) + "/revoke"
			}
			q, err := push.query()
			if err != nil {
				return err
			}
			path += q
			var res api.Revoked
			asJSON, err := g.call(cmd, "POST", path, api.RevokeRequest{Reason: reason}, &res)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), res)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "revoked %s: %d certificate(s) on the CRL, pushed to %d node(s)\n", args[0], len(res.Serials), res.Nodes)
			for _, s := range res.Serials {
				fmt.Fprintf(cmd.OutOrStdout(), "  %s\n", s)
			}
			printPushed(cmd.OutOrStdout(), "revoked "+esc(args[0])+": CRL", res.Pushed, push.timeout)
			for _, w := range res.Warnings {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s\n", w)
			}
			if len(res.Warnings) > 0 {
				fmt.Fprintf(cmd.ErrOrStderr(), "warning: those listeners have no certificate now: assign the node another identity "+
					"(meshca node assign) and apply a mesh that uses it (meshca mesh apply)\n")
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&reason, "reason", "", "why (kept in the audit log); when it starts with an RFC 5280 reason (key-compromise, ca-compromise, "+
		"affiliation-changed, superseded, cessation-of-operation, privilege-withdrawn), the CRL entries carry that reason code")
	push.register(cmd)
	return cmd
}
