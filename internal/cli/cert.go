package cli

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/atomicfile"
)

func certCmd(g *globals) *cobra.Command {
	cmd := group("cert", "Inspect and request certificates")
	cmd.AddCommand(certShowCmd(g), certIssueCmd(g))
	return cmd
}

func certShowCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "show NAME",
		Short: "Print an identity's current certificate chain as PEM (never the key)",
		Args:  exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			var out api.Cert
			asJSON, err := g.call(cmd, "GET", api.PathCerts+"/"+escapeName(args[0]), nil, &out)
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd.OutOrStdout(), out)
			}
			_, err = cmd.OutOrStdout().Write([]byte(out.ChainPEM))
			return err
		},
	}
}

// Files that `cert issue` writes.
const (
	CertFile   = "cert.pem"
	KeyFile    = "key.pem"
	BundleFile = "bundle.pem"
	PinFile    = "meshca-ca.pem" // the CAs that sign meshca's server certificate
)

func certIssueCmd(g *globals) *cobra.Command {
	var out string
	cmd := &cobra.Command{
		Use:   "issue NAME --out DIR",
		Short: "Generate a key here and get a certificate for identity NAME (for example admin credentials)",
		Long: "Generates an ECDSA P-256 key locally, sends only a CSR, and writes DIR/" + CertFile +
			" (certificate and chain), DIR/" + KeyFile + " (0600), DIR/" + BundleFile + " (trust bundle) and\n" +
			"DIR/" + PinFile + " (meshca's issuing CA). With an identity added with --admin-access, " + CertFile + ", " + KeyFile + "\n" +
			"and " + PinFile + " are the --tls-cert, --tls-key and --tls-ca of a remote admin API: the\n" +
			"only admin credentials meshca accepts are certificates for keys it never held.",
		Args: exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if out == "" {
				return fmt.Errorf("--out DIR is required")
			}
			c, err := g.client()
			if err != nil {
				return err
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return err
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
			if err != nil {
				return err
			}
			req := api.IssueCertRequest{CSRPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))}
			var issued api.Cert
			if err := c.do(cmd.Context(), "POST", api.PathCerts+"/"+escapeName(args[0]), req, &issued); err != nil {
				return err
			}
			var bundle, pin []byte
			if err := c.do(cmd.Context(), "GET", api.PathCABundle, nil, &bundle); err != nil {
				return err
			}
			if err := c.do(cmd.Context(), "GET", api.PathCAPin, nil, &pin); err != nil {
				return err
			}
			keyDER, err := x509.MarshalPKCS8PrivateKey(key)
			if err != nil {
				return err
			}
			if err := os.MkdirAll(out, 0o700); err != nil {
				return err
			}
			files := []struct {
				name string
				data []byte
			}{
				{KeyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})},
				{CertFile, []byte(issued.ChainPEM)},
				{BundleFile, bundle},
				{PinFile, pin},
			}
			for _, f := range files {
				if err := atomicfile.Write(filepath.Join(out, f.name), f.data, 0o600); err != nil {
					return fmt.Errorf("write %s: %w", f.name, err)
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "wrote %s, %s, %s and %s in %s (serial %s, not after %s)\n",
				CertFile, KeyFile, BundleFile, PinFile, out, issued.Serial, issued.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
			return nil
		},
	}
	cmd.Flags().StringVar(&out, "out", "", "directory to write the certificate, key and trust bundle into (created 0700)")
	return cmd
}
