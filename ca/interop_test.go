package ca_test

import (
	"context"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

// TestOpenSSLVerify checks leaves against a real, independent verifier.
func TestOpenSSLVerify(t *testing.T) {
	bin, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is required for this test: %v", err)
	}
	tests := []struct {
		name string
		alg  ca.KeyAlgorithm
	}{
		{name: "ecdsa-p256", alg: ca.ECDSAP256},
		{name: "rsa-2048", alg: ca.RSA2048},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// openssl checks validity against the wall clock.
			c, _ := newCA(t, tt.alg, clock.Real{})
			is, err := c.Issue(context.Background(), ca.Request{
				ID: spiffeid.RequireFromPath(td, "/ns/prod/web"), DNSNames: []string{"web.mesh.local"}, TTL: time.Hour,
			})
			if err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			var chain []byte
			for _, d := range is.Chain {
				chain = append(chain, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
			}
			files := map[string][]byte{
				"root.pem":  c.BundlePEM(),
				"chain.pem": chain,
				"leaf.pem":  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: is.DER}),
			}
			for name, data := range files {
				if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			for _, purpose := range []string{"sslclient", "sslserver"} {
				cmd := exec.Command(bin, "verify", "-purpose", purpose, "-CAfile", "root.pem", "-untrusted", "chain.pem", "leaf.pem")
				cmd.Dir = dir
				out, err := cmd.CombinedOutput()
				if err != nil || !strings.Contains(string(out), "OK") {
					t.Fatalf("openssl verify -purpose %s: %v\n%s", purpose, err, out)
				}
			}
		})
	}
}
