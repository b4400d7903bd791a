package app_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/config"
)

// Each way of pointing the CLI at the wrong listener, or with the wrong
// certificate, gets a message that names the cause, never "start it with
// meshca server" while a server is answering.
func TestCLIErrorsNameTheCause(t *testing.T) {
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) { c.Admin.MTLSListen = "127.0.0.1:0" })
	m.mustCLI("identity", "add", "ops", "--admin-access")
	m.mustCLI("identity", "add", "echo")
	opsDir, echoDir := filepath.Join(t.TempDir(), "ops"), filepath.Join(t.TempDir(), "echo")
	m.mustCLI("cert", "issue", "ops", "--out", opsDir)
	m.mustCLI("cert", "issue", "echo", "--out", echoDir)
	creds := func(dir, bundleDir string) []string {
		return []string{"--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"), "--tls-ca", filepath.Join(bundleDir, "bundle.pem")}
	}
	// A second meshca: its bundle does not trust the first one.
	other := startMesh(t, nil)
	otherDir := filepath.Join(t.TempDir(), "other")
	other.mustCLI("identity", "add", "ops", "--admin-access")
	other.mustCLI("cert", "issue", "ops", "--out", otherDir)

	tests := []struct {
		name string
		args []string
		want string
	}{
		{"certificate without admin access", append([]string{"--admin", m.app.AdminMTLS}, append(creds(echoDir, echoDir), "identity", "list")...),
			"refused this client certificate (remote error: tls: bad certificate): it must be the current certificate of an active identity added with --admin-access"},
		{"mTLS flags at the plain-HTTP listener", append([]string{"--admin", m.app.Admin}, append(creds(opsDir, opsDir), "identity", "list")...),
			"answers plain HTTP, not TLS: it is the loopback listener (admin.listen)"},
		{"plain HTTP at the mTLS listener", []string{"--admin", m.app.AdminMTLS, "identity", "list"},
			"requires mTLS: pass --tls-cert, --tls-key and --tls-ca"},
		{"bundle of another meshca", append([]string{"--admin", m.app.AdminMTLS}, append(creds(otherDir, otherDir), "identity", "list")...),
			"is not the meshca that --tls-ca trusts: its certificate does not verify against the trust bundle"},
		{"bootstrap at the admin port", []string{"bootstrap", "--server", m.app.Admin, "--node", "n", "--token", "x", "--ca-sha256", strings.Repeat("ab", 32), "--out", t.TempDir()},
			"answered in plain HTTP, not TLS: is it the admin API (admin.listen, port 8000 by default)? --server takes meshca's xDS address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := m.cli(tt.args...)
			if err == nil || !strings.Contains(stderr, tt.want) {
				t.Fatalf("err %v, stderr:\n%s\nwant it to contain %q", err, stderr, tt.want)
			}
			if strings.Contains(stderr, "start it with 'meshca server'") {
				t.Fatalf("tells the operator to start a server that is running:\n%s", stderr)
			}
			t.Logf("%s", strings.TrimSpace(stderr))
		})
	}
	// The admin certificate works on the same listener.
	m.mustCLI(append(append([]string{"--admin", m.app.AdminMTLS}, creds(opsDir, opsDir)...), "identity", "list")...)
}
