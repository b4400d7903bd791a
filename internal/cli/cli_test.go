package cli_test

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/cli"
)

func run(env map[string]string, args ...string) (stdout, stderr string, err error) {
	var out, errb bytes.Buffer
	err = cli.Execute(context.Background(), cli.Config{
		Stdout: &out, Stderr: &errb,
		Getenv: func(k string) string { return env[k] },
	}, args)
	return out.String(), errb.String(), err
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		// Refused before any connection is made.
		{"remote without mTLS", nil, []string{"--admin", "192.0.2.1:8000", "identity", "list"}, "requires mTLS: pass --tls-cert, --tls-key and --tls-ca"},
		{"env picks the server", map[string]string{cli.EnvAdmin: "192.0.2.1:8000"}, []string{"ca", "show"}, "192.0.2.1:8000 is not on loopback"},
		{"half the mTLS flags", nil, []string{"--admin", "127.0.0.1:1", "--tls-cert", "x.pem", "ca", "show"}, "needs all three"},
		{"bad address", nil, []string{"--admin", "nowhere", "ca", "show"}, `"nowhere" is not host:port`},
		{"bad output", nil, []string{"-o", "yaml", "identity", "list"}, "use text or json"},
		{"issue without out", nil, []string{"cert", "issue", "ops"}, "--out DIR is required"},
		{"import without files", nil, []string{"ca", "import"}, "both --cert and --key"},
		{"unknown command", nil, []string{"identity", "frobnicate"}, "frobnicate"},
		{"server without a server", nil, []string{"server", "--data-dir", "x"}, "no server"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, stderr, err := run(tt.env, tt.args...)
			if err == nil || !strings.Contains(stderr, tt.want) {
				t.Fatalf("err = %v, stderr = %q; want it to contain %q", err, stderr, tt.want)
			}
		})
	}
}
