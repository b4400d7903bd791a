package app_test

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestCLIWaitsForPushByDefault checks that identity revoke, node revoke and
// mesh apply wait for the connected nodes and say how far the change got,
// and that --no-wait skips it.
func TestCLIWaitsForPushByDefault(t *testing.T) {
	m := startMesh(t, nil)
	for _, id := range []string{"echo", "web", "db"} {
		m.addIdentity(id)
	}
	cliNode := m.joined("client-node", "web", "db")
	client := subscribe(t, m, "client-node", cliNode, secretName(""), secretName("web"), secretName("db"))
	client.next()
	m.joined("other-node", "echo")

	line := regexp.MustCompile(`revoked web: CRL at 1 of 1 connected nodes in [0-9.]+ ms\n`)
	out := m.mustCLI("identity", "revoke", "web")
	if !line.MatchString(out) {
		t.Fatalf("identity revoke:\n%s", out)
	}
	t.Logf("%s", line.FindString(out))
	out = m.mustCLI("identity", "revoke", "db", "--no-wait")
	if strings.Contains(out, "connected nodes") {
		t.Fatalf("identity revoke --no-wait waited:\n%s", out)
	}
	// No node of other-node is connected: 0 of 0.
	out = m.mustCLI("node", "revoke", "other-node")
	if !strings.Contains(out, "revoked other-node: CRL at 1 of 1 connected nodes in") {
		t.Fatalf("node revoke:\n%s", out)
	}
	file := filepath.Join("..", "..", "testdata", "mesh", "examples", "http-front-proxy.yaml")
	out = m.mustCLI("mesh", "apply", "-f", file)
	if !regexp.MustCompile(`mesh version 1 at \d+ of \d+ connected nodes in [0-9.]+ ms\n`).MatchString(out) {
		t.Fatalf("mesh apply:\n%s", out)
	}
	if _, stderr, err := m.cli("mesh", "apply", "-f", file, "--wait-timeout", "2h"); err == nil || !strings.Contains(stderr, "--wait-timeout 2h0m0s") {
		t.Fatalf("mesh apply with a 2h wait: err %v, stderr %q", err, stderr)
	}
}
