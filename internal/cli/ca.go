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
		fmt.Fprintf(tw, "rotation:\t%s, phase %s since %s\n", rot.Kind, rot.Phase, rot.PhaseSince.UTC().Format(time.RFC3339))
		if rot.WaitingFor != "" {
			fmt.Fprintf(tw, "  waiting for:\t%s\n", rot.WaitingFor)
		}
	} else {
		fmt.Fprintf(tw, "rotation:\tnone\n")
	}
	return tw.Flush()
}

func caRotateCmd(g *globals) *cobra.Command {
	var root, wait bool
	cmd := &cobra.Command{
		Use:   "rotate [--root]",
		Short: "Rotate the intermediate (or, with --root, the root) without breaking a handshake",
		Long: "An intermediate rotation switches issuance to a new intermediate under the same root at\n" +
			"once; a root rotation first publishes old and new roots in every node's trust bundle and\n" +
			"waits until every connected node has acknowledged it. Either way leaves are reissued in\n" +
			"spread-out batches and the previous CA is retired after the longest leaf lifetime.\n" +
			"Follow it with: meshca ca show",
		Args: exactArgs(0, ""),
		RunE: func(cmd *cobra.Command, _ []string) error {
			var out api.CA
			asJSON, err := g.call(cmd, "POST", api.PathCARotate, api.RotateCARequest{Root: root}, &out)
			if err != nil {
				return err
			}
			if asJSON && !wait {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			if err := writeCA(cmd, out); err != nil || !wait {
				return err
			}
			return waitRotation(cmd, g, time.Second)
		},
	}
	cmd.Flags().BoolVar(&root, "root", false, "rotate the root too")
	cmd.Flags().BoolVar(&wait, "wait", false, "follow the rotation, printing each phase and what it waits for, until it is done")
	return cmd
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

// waitRotation polls the CA until no rotation is in progress, printing
// every change of phase or of what it waits for.
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
		if cur.Rotation == nil {
			fmt.Fprintf(cmd.OutOrStdout(), "%s rotation done: issuer %s\n", time.Now().UTC().Format(time.RFC3339), cur.Issuer.Serial)
			return nil
		}
		if line := cur.Rotation.Kind + " rotation: " + cur.Rotation.Phase + "; waiting for " + cur.Rotation.WaitingFor; line != last {
			last = line
			fmt.Fprintf(cmd.OutOrStdout(), "%s %s\n", time.Now().UTC().Format(time.RFC3339), line)
		}
		select {
		case <-cmd.Context().Done():
			return nil
		case <-time.After(every):
		}
	}
}
