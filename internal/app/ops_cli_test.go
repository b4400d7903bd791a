package app_test

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/cli"
)

// cli runs the meshca CLI against this meshca's admin API.
func (m *mesh) cli(args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	err = cli.Execute(context.Background(), cli.Config{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }},
		append([]string{"--admin", m.app.Admin}, args...))
	return out.String(), errb.String(), err
}

// mustCLI is cli that fails the test when the command fails.
func (m *mesh) mustCLI(args ...string) string {
	m.t.Helper()
	out, errOut, err := m.cli(args...)
	if err != nil {
		m.t.Fatalf("meshca %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func (m *mesh) statusPage() string {
	m.t.Helper()
	resp, err := m.http.Get("http://" + m.app.Admin + "/")
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// A revoked identity's certificate is shown as revoked everywhere an
// operator looks: identity show, the CERT column of identity list, the JSON
// API and the status page.
func TestRevokedCertificateShownRevoked(t *testing.T) {
	m := startMesh(t, nil)
	m.mustCLI("identity", "add", "web")
	m.mustCLI("identity", "add", "api")
	m.mustCLI("identity", "revoke", "web", "--reason", "key leaked")

	show := m.mustCLI("identity", "show", "web")
	if !regexp.MustCompile(`(?m)^certificate:\s+revoked$`).MatchString(show) {
		t.Errorf("identity show of a revoked identity:\n%s", show)
	}
	if !regexp.MustCompile(`(?m)^next renewal:\s+none`).MatchString(show) {
		t.Errorf("identity show promises a renewal of a revoked identity:\n%s", show)
	}
	list := m.mustCLI("identity", "list")
	rows := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(list), "\n")[1:] {
		f := strings.Fields(line)
		rows[f[0]] = f[len(f)-1]
	}
	if rows["web"] != "revoked" || rows["api"] != "valid" {
		t.Errorf("identity list CERT column: web %q, api %q (want revoked, valid):\n%s", rows["web"], rows["api"], list)
	}
	var id api.Identity
	m.admin("GET", api.PathIdentities+"/web", nil, &id, http.StatusOK)
	if id.Cert == nil || id.Cert.State != "revoked" || id.Cert.RenewAt != nil {
		t.Errorf("GET identity: %+v", id.Cert)
	}
	page := m.statusPage()
	if !strings.Contains(page, `<td class="cert-state revoked">revoked</td>`) {
		t.Errorf("status page does not show the revoked certificate as revoked")
	}
	if strings.Count(page, `<td class="cert-state valid">valid</td>`) != 1 {
		t.Errorf("status page: want exactly one valid certificate (api)")
	}
}

// identity show tells when the certificate renews, as the status page does.
func TestIdentityShowNextRenewal(t *testing.T) {
	m := startMesh(t, nil)
	m.mustCLI("identity", "add", "web", "--ttl", "2h")
	show := m.mustCLI("identity", "show", "web")
	re := regexp.MustCompile(`(?m)^next renewal:\s+(\S+)$`)
	got := re.FindStringSubmatch(show)
	if got == nil {
		t.Fatalf("identity show has no next renewal:\n%s", show)
	}
	var id api.Identity
	m.admin("GET", api.PathIdentities+"/web", nil, &id, http.StatusOK)
	if id.Cert.RenewAt == nil || !id.Cert.RenewAt.After(id.Cert.NotBefore) || !id.Cert.RenewAt.Before(id.Cert.NotAfter) {
		t.Fatalf("renew_at %v outside the validity %v..%v", id.Cert.RenewAt, id.Cert.NotBefore, id.Cert.NotAfter)
	}
	t.Logf("next renewal %s for a certificate valid %s..%s", got[1], id.Cert.NotBefore, id.Cert.NotAfter)
}

// --ttl 0 is refused like any other out-of-range TTL instead of becoming
// the default; leaving --ttl out still means the default.
func TestTTLZeroRefused(t *testing.T) {
	m := startMesh(t, nil)
	for _, args := range [][]string{
		{"identity", "add", "zero", "--ttl", "0"},
		{"identity", "add", "zero", "--ttl", "0s"},
		{"identity", "add", "negative", "--ttl", "-1h"},
	} {
		_, stderr, err := m.cli(args...)
		if err == nil || !strings.Contains(stderr, "out of range 5m0s to 720h0m0s") {
			t.Errorf("meshca %s: err %v, stderr %q; want it refused as out of range", strings.Join(args, " "), err, stderr)
		}
	}
	list := filepath.Join(t.TempDir(), "ids.txt")
	if err := os.WriteFile(list, []byte("zero ttl=0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, stderr, err := m.cli("identity", "add", "--from", list); err == nil || !strings.Contains(stderr, "out of range") {
		t.Errorf("identity add --from with ttl=0: err %v, stderr %q", err, stderr)
	}
	var e api.Error
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "zero", TTL: "0s"}, &e, http.StatusBadRequest)
	if !strings.Contains(e.Error, "out of range") {
		t.Errorf("API ttl 0s: %+v", e)
	}
	if _, _, err := m.cli("identity", "show", "zero"); err == nil {
		t.Error("an identity was created with --ttl 0")
	}
	show := m.mustCLI("identity", "add", "default")
	if !regexp.MustCompile(`(?m)^ttl:\s+1h0m0s$`).MatchString(show) {
		t.Errorf("without --ttl the default applies:\n%s", show)
	}
}

// A new join token for a node that has joined leaves JOINED at yes: its
// certificate still works.
func TestNodeTokenKeepsJoined(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	m.joined("n1", "web")
	m.addNode("n2", "sidecar", "web")
	m.mustCLI("node", "token", "n1")
	joined := func() map[string]string {
		rows := map[string]string{}
		for _, line := range strings.Split(strings.TrimSpace(m.mustCLI("node", "list")), "\n")[1:] {
			f := strings.Fields(line)
			rows[f[0]] = f[3]
		}
		return rows
	}
	if got := joined(); got["n1"] != "yes" || got["n2"] != "no" {
		t.Fatalf("JOINED after node token: n1 %q, n2 %q (want yes, no)", got["n1"], got["n2"])
	}
	// Bootstrapping again with the new token keeps it joined.
	tok := m.mustCLI("node", "token", "n1")
	if !strings.Contains(tok, "meshca bootstrap --server") {
		t.Fatalf("node token printed:\n%s", tok)
	}
	if got := joined(); got["n1"] != "yes" {
		t.Fatalf("JOINED after a second token: %q", got["n1"])
	}
}

// node add with a bad name says the node name is wrong.
func TestNodeAddBadNameSaysNode(t *testing.T) {
	m := startMesh(t, nil)
	_, stderr, err := m.cli("node", "add", "a b")
	if err == nil || !strings.Contains(stderr, `invalid node name "a b"`) || strings.Contains(stderr, "identity name") {
		t.Fatalf("node add 'a b': err %v, stderr %q", err, stderr)
	}
}

// Shell completion (cobra's __complete, what the scripts from meshca
// completion call) offers the identity and node names the server knows.
func TestCompletionOffersNames(t *testing.T) {
	m := startMesh(t, nil)
	for _, id := range []string{"web", "worker", "api"} {
		m.addIdentity(id)
	}
	m.addNode("edge-1", "front-proxy", "web")
	m.addNode("east-2", "sidecar", "api")
	complete := func(args ...string) []string {
		out := m.mustCLI(append([]string{"__complete"}, args...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return lines[:len(lines)-1] // the last line is the directive
	}
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"identity", "show", "w"}, "web worker"},
		{[]string{"identity", "revoke", ""}, "api web worker"},
		{[]string{"cert", "issue", "a"}, "api"},
		{[]string{"node", "show", "e"}, "east-2 edge-1"},
		{[]string{"node", "token", "ed"}, "edge-1"},
		{[]string{"node", "assign", "edge-1", "--identity", "wo"}, "worker"},
		{[]string{"node", "add", "n", "--identity", ""}, "api web worker"},
		{[]string{"identity", "show", "web", ""}, ""},
	}
	for _, tt := range tests {
		if got := strings.Join(complete(tt.args...), " "); got != tt.want {
			t.Errorf("complete %q: %q, want %q", tt.args, got, tt.want)
		}
	}
}

// -o json of a list is a JSON list even when empty.
func TestJSONListsNeverEmpty(t *testing.T) {
	m := startMesh(t, nil)
	for _, args := range [][]string{{"logs", "-o", "json"}, {"identity", "list", "-o", "json"}, {"node", "list", "-o", "json"}, {"logs", "--node", "nobody", "-o", "json"}} {
		if out := strings.TrimSpace(m.mustCLI(args...)); out != "[]" {
			t.Errorf("meshca %s printed %q, want []", strings.Join(args, " "), out)
		}
	}
}
