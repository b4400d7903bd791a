package cli

import (
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
)

func caCmd(g *globals) *cobra.Command {
	cmd := group("ca", "Inspect the CA, print its trust bundle, import an existing CA")
	cmd.AddCommand(caShowCmd(g), caBundleCmd(g), caPinCmd(g), caImportCmd(g), caRotateCmd(g), caCRLCmd(g))
	return cmd
}

func caShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show",
		Short: "Show the issuing CA and the roots: subjects, serials, expiry",
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out api.CA
			asJSON, err := g.call(cmd, "GET", api.PathCA, nil, &out)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			return writeCA(cmd, out)
		},
	}
}

func writeCA(cmd *cobra.Command, out api.CA) error {
	tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "trust domain:\t%s\n", out.TrustDomain)
	row := func(role string, c api.CACert) {
		fmt.Fprintf(tw, "%s:\t%s\n", role, c.Subject)
		fmt.Fprintf(tw, "  serial:\t%s\n", c.Serial)
		fmt.Fprintf(tw, "  not after:\t%s\n", c.NotAfter.UTC().Format(time.RFC3339))
		fmt.Fprintf(tw, "  sha256:\t%s\n", c.SHA256)
	}
	row("issuer", out.Issuer)
	for _, r := range out.Roots {
		row("root", r)
	}
	if rot := out.Rotation; rot != nil {
		kind := rot.Kind
		if rot.Emergency {
			kind = "emergency " + kind
		}
		fmt.Fprintf(tw, "rotation:\t%s, phase %s since %s (started %s)\n", kind, rot.Phase, rot.PhaseSince.UTC().Format(time.RFC3339), rot.StartedAt.UTC().Format(time.RFC3339))
		fmt.Fprintf(tw, "  progress:\t%s\n", rotationProgress(rot))
		if rot.WaitingFor != "" {
			fmt.Fprintf(tw, "  waiting for:\t%s\n", rot.WaitingFor)
		}
		if rot.RetireAfter != nil {
			label := "ends by"
			if rot.Phase == "publishing" {
				label = "switches by"
			}
			fmt.Fprintf(tw, "  %s:\t%s at the latest\n", label, rot.RetireAfter.UTC().Format(time.RFC3339))
		}
	} else {
		fmt.Fprintf(tw, "rotation:\tnone\n")
	}
	if d := out.LastRotation; d != nil {
		fmt.Fprintf(tw, "last rotation:\t%s\n", rotationDone(d))
	}
	return tw.Flush()
}

func caRotateCmd(g *globals) *cobra.Command {
	var root, wait, abort, emergency bool
	cmd := &cobra.Command{
		Use:   "rotate [--root] [--wait] | --abort | --emergency [--root]",
		Short: "Rotate the intermediate (or, with --root, the root) without breaking a handshake",
		Long: "An intermediate rotation switches issuance to a new intermediate under the same root at\n" +
			"once; a root rotation first publishes old and new roots in every node's trust bundle and\n" +
			"switches once every connected node has acknowledged it. Then every leaf is re-issued under\n" +
			"the new CA at once, and the previous CA retires as soon as connected nodes acknowledged\n" +
			"their new certificates and every node renewed its node certificate under the new CA\n" +
			"or let it expire.\n\n" +
			"--wait follows it, printing the phase and progress, until meshca's own work is done.\n" +
			"--abort withdraws a root rotation that has not switched issuance yet.\n" +
			"--emergency, when a CA key may be compromised, replaces the CA now (with --root the root\n" +
			"too), superseding a rotation in progress: every identity is re-keyed at once and the\n" +
			"replaced CA's certificates are revoked. After --emergency, with or without --root, nodes\n" +
			"join again with a new token (meshca node token NAME): their node certificates and the CAs\n" +
			"they verify meshca by are the replaced ones; admin certificates are issued again too\n" +
			"(meshca cert issue). Follow a rotation with: meshca ca show",
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if abort && (root || emergency || wait) {
				return fmt.Errorf("--abort takes no other flag: it withdraws the rotation in progress")
			}
			var out api.CA
			req := api.RotateCARequest{Root: root, Emergency: emergency, Abort: abort}
			asJSON, err := g.call(cmd, "POST", api.PathCARotate, req, &out)
			if err != nil {
				return err
			}
			if asJSON && !wait {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			if abort {
				fmt.Fprintln(cmd.OutOrStdout(), "rotation aborted: the new root is withdrawn from the trust bundle")
			}
			if err := writeCA(cmd, out); err != nil {
				return err
			}
			if emergency {
				fmt.Fprintln(cmd.OutOrStdout(), "nodes must join again: their node certificates and the CAs they verify meshca by are the replaced ones (meshca node token NAME, then meshca bootstrap on the node); admin certificates must be issued again (meshca cert issue)")
			}
			if !wait {
				return nil
			}
			return waitRotation(cmd, g, time.Second)
		},
	}
	cmd.Flags().BoolVar(&root, "root", false, "rotate the root too")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the rotation, printing its phase and progress, until meshca's own work is done")
	cmd.Flags().BoolVar(&abort, "abort", false, "withdraw a root rotation that has not switched issuance yet")
	cmd.Flags().BoolVar(&emergency, "emergency", false, "a CA key may be compromised: replace the CA now, re-key every identity and revoke the replaced CA's certificates")
	return cmd
}

// rotationProgress is one line of a rotation's progress.
func rotationProgress(rot *api.CARotation) string {
	s := fmt.Sprintf("re-issued %d of %d leaves", rot.Reissued, rot.Leaves)
	if rot.Leaves == 0 && rot.Phase == "publishing" {
		s = "leaves are re-issued after the switch"
	}
	if rot.ReissueFailed > 0 {
		s += fmt.Sprintf(" (%d failed, retried)", rot.ReissueFailed)
	}
	s += fmt.Sprintf(", nodes acknowledged %d of %d connected", rot.NodesAcked, rot.NodesConnected)
	if rot.OldNodeCerts > 0 {
		s += fmt.Sprintf(", %d node certificate(s) from the previous CA", rot.OldNodeCerts)
	}
	if rot.OldAgentCerts > 0 {
		s += fmt.Sprintf(", %d agent certificate(s) from the previous CA", rot.OldAgentCerts)
	}
	return s
}

func rotationDone(d *api.CARotationDone) string {
	kind := d.Kind
	if d.Emergency {
		kind = "emergency " + kind
	}
	if d.Aborted {
		return fmt.Sprintf("%s, aborted %s", kind, d.FinishedAt.UTC().Format(time.RFC3339))
	}
	s := fmt.Sprintf("%s, finished %s after %s, re-issued %d leaves", kind, d.FinishedAt.UTC().Format(time.RFC3339),
		d.FinishedAt.Sub(d.StartedAt).Round(time.Millisecond), d.Reissued)
	if d.Revoked > 0 {
		s += fmt.Sprintf(", revoked %d certificates of the replaced CA", d.Revoked)
	}
	return s
}

func caCRLCmd(g *globals) *cobra.Command {
	return pemCmd(g, "crl", "Print the current CRL as PEM (nothing when no unexpired certificate is revoked)", api.PathCRL)
}

func caBundleCmd(g *globals) *cobra.Command {
	return pemCmd(g, "bundle", "Print the trust bundle (the root certificates) as PEM", api.PathCABundle)
}

// pemCmd prints the PEM the admin API serves at path.
func caPinCmd(g *globals) *cobra.Command {
	cmd := pemCmd(g, "pin", "Print the CA(s) that sign meshca's server certificate as PEM: the --ca-file of meshca bootstrap", api.PathCAPin)
	cmd.Long = "Prints meshca's issuing CA (and, during a rotation, the previous and next one) as PEM.\n" +
		"A node given this file with meshca bootstrap --ca-file sends its join token only to a\n" +
		"server holding one of these CAs; the trust bundle's roots may be shared with other CAs of\n" +
		"an organisation and do not identify meshca."
	return cmd
}

func pemCmd(g *globals, use, short, path string) *cobra.Command {
	return &cobra.Command{
		Use:   use,
		Short: short,
		Args:  exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.client()
			if err != nil {
				return err
			}
			var pem []byte
			if err := c.do(cmd.Context(), "GET", path, nil, &pem); err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(pem)
			return err
		},
	}
}

func caImportCmd(g *globals) *cobra.Command {
	var certFile, keyFile string
	cmd := &cobra.Command{
		Use:   "import --cert FILE --key FILE",
		Short: "Issue from an existing CA (before any identity is added)",
		Long: "Makes meshca issue from an organisation's CA so that the mesh chains under its root.\n" +
			"--cert holds the CA certificate, then its chain up to and including the root.\n" +
			"--key holds the CA's private key (PKCS#8, SEC1 or PKCS#1 PEM); it is sealed in the store.",
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			if certFile == "" || keyFile == "" {
				return fmt.Errorf("both --cert and --key are required")
			}
			certPEM, err := os.ReadFile(certFile)
			if err != nil {
				return fmt.Errorf("read --cert: %w", err)
			}
			keyPEM, err := os.ReadFile(keyFile)
			if err != nil {
				return fmt.Errorf("read --key: %w", err)
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			var out api.CA
			if err := c.do(cmd.Context(), "POST", api.PathCAImport, api.ImportCARequest{CertPEM: string(certPEM), KeyPEM: string(keyPEM)}, &out); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "imported; meshca now issues from:")
			return writeCA(cmd, out)
		},
	}
	cmd.Flags().StringVar(&certFile, "cert", "", "PEM file: CA certificate, then its chain up to the root")
	cmd.Flags().StringVar(&keyFile, "key", "", "PEM file: the CA's private key")
	return cmd
}

// waitRotation polls the CA until no rotation is in progress or meshca's
// own part of it is done (what is left is nodes renewing their node
// certificates), printing every change of phase, progress or of what it
// waits for.
func waitRotation(cmd *cobra.Command, g *globals, every time.Duration) error {
	c, err := g.client()
	if err != nil {
		return err
	}
	last := ""
	for {
		var cur api.CA
		if err := c.do(cmd.Context(), "GET", api.PathCA, nil, &cur); err != nil {
			return err
		}
		now := time.Now().UTC().Format(time.RFC3339)
		rot := cur.Rotation
		if rot == nil {
			line := "rotation done: issuer " + cur.Issuer.Serial
			if d := cur.LastRotation; d != nil {
				line += " (" + rotationDone(d) + ")"
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", now, line)
			return nil
		}
		line := rot.Kind + " rotation: " + rot.Phase
		if rot.WaitingFor != "" {
			line += "; waiting for " + rot.WaitingFor
		}
		line += "; " + rotationProgress(rot)
		if line != last {
			last = line
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", now, line)
		}
		if rot.OwnWorkDone {
			fmt.Fprintf(cmd.OutOrStdout(), "%s meshca's part of the rotation is done: issuer %s; the previous CA retires once nodes renewed their node certificates (by %s at the latest); follow it with: meshca ca show\n",
				now, cur.Issuer.Serial, retireBy(rot))
			return nil
		}
		select {
		case <-cmd.Context().Done():
			return nil
		case <-time.After(every):
		}
	}
}

func retireBy(rot *api.CARotation) string {
	if rot.RetireAfter == nil {
		return "their expiry"
	}
	return rot.RetireAfter.UTC().Format(time.RFC3339)
}
