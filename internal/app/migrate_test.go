package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

// TestMigrateDataDirToEtcd fills a data directory through a meshca on
// bbolt (identities, a node that joined, a revocation, a mesh version, the
// audit log they wrote), stops it, migrates the directory into etcd, and
// starts meshca on etcd from another directory holding only the kek: it
// serves the same identities and nodes, the node's stream gets the same
// certificate, and the audit log goes on without a gap. A second
// migration into the same prefix is refused.
func TestMigrateDataDirToEtcd(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "bbolt")
	m := startMeshIn(t, nil, dir)
	echo := m.addIdentity("echo")
	m.addIdentity("web")
	cert := m.joined("n1", "echo")
	m.admin("POST", api.PathRevoke+"/web", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	doc, err := os.ReadFile(filepath.Join("..", "..", "testdata", "mesh", "examples", "http-front-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: string(doc)}, nil, http.StatusCreated)
	var ids, nodes, hist []map[string]any
	m.admin("GET", api.PathIdentities, nil, &ids, http.StatusOK)
	m.admin("GET", api.PathNodes, nil, &nodes, http.StatusOK)
	m.admin("GET", api.PathMeshHist, nil, &hist, http.StatusOK)
	before := m.audit()
	m.stop()

	e := testkit.StartEtcd(t)
	cfg := testkit.LoopbackConfig(dir)
	cfg.Store.Etcd = config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/migrated"}
	var out bytes.Buffer
	if err := app.Migrate(context.Background(), cfg, &out); err != nil {
		t.Fatalf("migrate: %v\n%s", err, out.String())
	}
	t.Logf("meshca store migrate:\n%s", out.String())
	for _, want := range []string{"compare  identities", "migrated ", "audit log continues after seq"} {
		if !strings.Contains(out.String(), want) {
			t.Fatalf("migrate output lacks %q", want)
		}
	}
	if err := app.Migrate(context.Background(), cfg, &out); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("second migration into the same prefix: %v", err)
	}

	etcdDir := filepath.Join(t.TempDir(), "etcd")
	copyKEK(t, dir, etcdDir)
	m2 := startMeshIn(t, nil, etcdDir, func(c *config.Config) { c.Store.Etcd = cfg.Store.Etcd })
	var ids2, nodes2, hist2 []map[string]any
	m2.admin("GET", api.PathIdentities, nil, &ids2, http.StatusOK)
	m2.admin("GET", api.PathNodes, nil, &nodes2, http.StatusOK)
	m2.admin("GET", api.PathMeshHist, nil, &hist2, http.StatusOK)
	for what, pair := range map[string][2][]map[string]any{"identities": {ids, ids2}, "nodes": {nodes, nodes2}, "mesh history": {hist, hist2}} {
		if !sameJSON(t, pair[0], pair[1]) {
			t.Fatalf("%s differ after migration:\n%v\n%v", what, pair[0], pair[1])
		}
	}
	node := subscribe(t, m2, "n1", cert, secretName(""), secretName("echo"))
	if s := node.next()[secretName("echo")]; s == nil || serialOf(t, s) != echo.Cert.Serial {
		t.Fatal("the node's stream on etcd does not serve echo's migrated certificate")
	}

	m2.addIdentity("db")
	after := m2.audit()
	if len(after) <= len(before) {
		t.Fatalf("audit after migration has %d events, before %d", len(after), len(before))
	}
	for i, ev := range after {
		if ev.Seq != uint64(i+1) {
			t.Fatalf("audit seq %d at position %d: a gap", ev.Seq, i+1)
		}
		if i < len(before) && (ev.Action != before[i].Action || !ev.Time.Equal(before[i].Time)) {
			t.Fatalf("audit event %d changed: %+v, was %+v", ev.Seq, ev, before[i])
		}
	}
	t.Logf("audit: %d events before migration, continues at seq %d (%s)", len(before), after[len(before)].Seq, after[len(before)].Action)
}

func sameJSON(t *testing.T, a, b []map[string]any) bool {
	t.Helper()
	ja, err := json.Marshal(a)
	if err != nil {
		t.Fatal(err)
	}
	jb, err := json.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	return len(a) == len(b) && bytes.Equal(ja, jb)
}
