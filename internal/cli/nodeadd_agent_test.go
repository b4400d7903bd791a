package cli_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestNodeAddPrintsAgentCommand: node add --agent and node token of an
// agent node print the meshca agent command that joins it (never meshca
// bootstrap, which would make a plain node's directory); a plain node
// still gets meshca bootstrap.
func TestNodeAddPrintsAgentCommand(t *testing.T) {
	addr := adminAddr(t) // its admin API knows no xDS address: --server is empty
	cli := func(args ...string) string {
		t.Helper()
		out, stderr, err := run(nil, append([]string{"--admin", addr}, args...)...)
		if err != nil {
			t.Fatalf("meshca %v: %v\n%s", args, err, stderr)
		}
		return out
	}
	cli("identity", "add", "web")
	tokenFile := filepath.Join(t.TempDir(), "web-1.token")
	tests := []struct {
		name      string
		args      []string
		want      string
		wantToken bool // the token itself is printed
	}{
		{"agent node, token file", []string{"node", "add", "web-1", "--identity", "web", "--agent", "--token-file", tokenFile},
			"meshca agent --server  --node web-1 --token-file " + tokenFile + " --ca-sha256 ", false},
		{"agent node, token printed", []string{"node", "add", "web-2", "--identity", "web", "--agent"},
			"meshca agent --server  --node web-2 --token-file FILE --ca-sha256 ", true},
		{"agent node, new token", []string{"node", "token", "web-2"},
			"meshca agent --server  --node web-2 --token-file FILE --ca-sha256 ", true},
		{"plain node", []string{"node", "add", "web-3", "--identity", "web"},
			"meshca bootstrap --server  --node web-3 --token ", true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out := cli(tc.args...)
			if !strings.Contains(out, tc.want) {
				t.Fatalf("printed:\n%s\nwant a line with %q", out, tc.want)
			}
			agent := strings.Contains(tc.want, "meshca agent")
			if agent && (strings.Contains(out, "meshca bootstrap") || !strings.Contains(out, "--data-dir ")) {
				t.Fatalf("an agent node's command is not meshca agent ... --data-dir:\n%s", out)
			}
			if got := strings.Contains(out, "join token (single use"); got != tc.wantToken {
				t.Fatalf("token printed: %v, want %v:\n%s", got, tc.wantToken, out)
			}
		})
	}
	if b, err := os.ReadFile(tokenFile); err != nil || len(strings.TrimSpace(string(b))) == 0 {
		t.Fatalf("--token-file: %v (%d bytes)", err, len(b))
	}
}
