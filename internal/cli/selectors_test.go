package cli_test

import (
	"context"
	"encoding/json"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

type noConnections struct{}

func (noConnections) NodeConnection(string) api.NodeConnection { return api.NodeConnection{} }

// adminAddr serves a real admin API on a temp store over loopback.
func adminAddr(t *testing.T) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.LoadOrCreate(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: dir, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	td, _ := identity.TrustDomain("mesh.local")
	clk := clock.NewFake(time.Now())
	ctx := context.Background()
	auth, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(ctx, registry.Config{Store: st, TrustDomain: td, Issuer: auth, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Identities: reg, CSRSigner: reg, Nodes: reg, Reissuer: reg, Revoker: reg, CRLs: auth, Meshes: reg,
		Connections: noConnections{}, Authority: auth, Audit: reg, TrustDomain: "mesh.local"})
	if err != nil {
		t.Fatal(err)
	}
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)
	return strings.TrimPrefix(ts.URL, "http://")
}

// TestNodeAssignSelectors: meshca node assign --selector through the admin
// API, shown by node show (text and JSON); bad selectors are named.
func TestNodeAssignSelectors(t *testing.T) {
	addr := adminAddr(t)
	cli := func(args ...string) (string, string, error) {
		return run(nil, append([]string{"--admin", addr}, args...)...)
	}
	for _, args := range [][]string{
		{"identity", "add", "web"},
		{"identity", "add", "db"},
		{"node", "add", "n1", "--agent", "--identity", "db"},
	} {
		if _, stderr, err := cli(args...); err != nil {
			t.Fatalf("%v: %v %s", args, err, stderr)
		}
	}
	out, stderr, err := cli("node", "assign", "n1", "--identity", "web", "--selector", "uid:1000", "--selector", "path:/usr/bin/echo")
	if err != nil {
		t.Fatalf("assign: %v %s", err, stderr)
	}
	for _, want := range []string{"web selectors:  path:/usr/bin/echo,uid:1000", "db selectors:   any local process"} {
		if !strings.Contains(out, want) {
			t.Fatalf("node assign printed:\n%s\nwant a line %q", out, want)
		}
	}
	out, _, err = cli("-o", "json", "node", "show", "n1")
	var n api.Node
	if err != nil || json.Unmarshal([]byte(out), &n) != nil {
		t.Fatalf("node show -o json: %v\n%s", err, out)
	}
	if got := strings.Join(n.Selectors["web"], " "); got != "path:/usr/bin/echo uid:1000" || len(n.Selectors) != 1 {
		t.Fatalf("node show -o json: selectors %v", n.Selectors)
	}

	_, stderr, err = cli("node", "assign", "n1", "--identity", "web", "--selector", "path:relative/echo")
	if err == nil || !strings.Contains(stderr, `"path:relative/echo"`) || !strings.Contains(stderr, "absolute") {
		t.Fatalf("bad selector: err = %v, stderr = %q; want the selector named and what to write", err, stderr)
	}
	// node add takes them for each of its identities.
	if out, stderr, err := cli("node", "add", "n2", "--agent", "--identity", "web", "--identity", "db", "--selector", "uid:7"); err != nil ||
		!strings.Contains(out, "added node n2") {
		t.Fatalf("node add --selector: %v %s\n%s", err, stderr, out)
	}
	out, _, _ = cli("node", "show", "n2")
	if !strings.Contains(out, "db selectors:   uid:7") || !strings.Contains(out, "web selectors:  uid:7") {
		t.Fatalf("node show n2:\n%s", out)
	}
	// A path may contain a comma: one flag is one selector.
	if out, stderr, err := cli("node", "assign", "n1", "--identity", "web", "--selector", "path:/opt/a,b"); err != nil || !strings.Contains(out, "path:/opt/a,b") {
		t.Fatalf("a path with a comma: %v %s\n%s", err, stderr, out)
	}
}
