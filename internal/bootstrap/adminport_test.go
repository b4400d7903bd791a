package bootstrap_test

import (
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
)

// TestAdminPort reads the admin port back from rendered files, as Envoy's
// own parser does, and from hand-edited ones; it finds none where there is
// none to find.
func TestAdminPort(t *testing.T) {
	for _, port := range []uint32{0, 1, 9901, 19000, 65535} {
		p := goldenParams()
		p.AdminPort = port
		// A node name that mimics the admin block stays inside its quotes.
		p.Node = "edge\nadmin:\n  port_value: 7"
		p.Replicas = []string{"meshca-2.internal:7000"}
		y, err := bootstrap.Envoy(p)
		if err != nil {
			t.Fatal(err)
		}
		b, err := envoycheck.ParseEnvoy(y)
		if err != nil {
			t.Fatal(err)
		}
		want := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue()
		if got, ok := bootstrap.AdminPort(y); !ok || got != want {
			t.Errorf("AdminPort(AdminPort %d) = %d, %v; Envoy reads %d", port, got, ok, want)
		}
	}
	tests := []struct {
		name string
		yaml string
		want uint32 // 0: none found
	}{
		{"block style", "node: {id: a}\nadmin:\n  address:\n    socket_address:\n      address: 127.0.0.1\n      port_value: 9123\n", 9123},
		{"flow style on the admin line", "admin: {address: {socket_address: {address: 127.0.0.1, port_value: 9124}}}\n", 9124},
		{"CRLF and comments", "# envoy\r\nadmin:\r\n  # the port\r\n  address:\r\n    socket_address: {address: 127.0.0.1, port_value: 9125}\r\n", 9125},
		{"no admin block", "node: {id: a}\nstatic_resources:\n  clusters:\n  - {port_value: 6565}\n", 0},
		{"admin without a port", "admin:\n  address: {pipe: {path: /a}}\nstatic_resources:\n  x: {port_value: 6565}\n", 0},
		{"port out of range", "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 70000}}\n", 0},
		{"port zero", "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: 0}}\n", 0},
		{"not a number", "admin:\n  address: {socket_address: {address: 127.0.0.1, port_value: x}}\n", 0},
		{"admin is a prefix of another key", "administrator:\n  port_value: 9126\n", 0},
		{"empty", "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, ok := bootstrap.AdminPort([]byte(tt.yaml))
			if ok != (tt.want != 0) || got != tt.want {
				t.Errorf("AdminPort = %d, %v; want %d\n%s", got, ok, tt.want, strings.ReplaceAll(tt.yaml, "\r", `\r`))
			}
		})
	}
}
