package app_test

import (
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

// TestRejoinClosesConnectionsOnOtherReplica: a node streams from replica
// B with its node certificate, then joins again through replica A. The
// re-join revokes the certificate B's connection was made with; B learns
// of it from the change feed (an etcd watch) and closes that connection,
// as A would.
func TestRejoinClosesConnectionsOnOtherReplica(t *testing.T) {
	e := testkit.StartEtcd(t)
	onEtcd := func(c *config.Config) {
		c.Store.Etcd = config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/rejoin"}
	}
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	a := startMeshIn(t, nil, dirA, onEtcd)
	copyKEK(t, dirA, dirB)
	b := startMeshIn(t, nil, dirB, onEtcd)

	a.addIdentity("echo")
	tok := a.addNode("n1", "sidecar", "echo")
	first, err := b.join("n1", tok.Token)
	if err != nil {
		t.Fatalf("join through B: %v", err)
	}
	onB := subscribe(t, b, "n1", first, secretName(""), secretName("echo"))
	if got := onB.next(); got[secretName("echo")] == nil {
		t.Fatalf("first push from B lacks echo: %v", names(got))
	}

	var again api.JoinToken
	a.admin("POST", api.PathNodes+"/n1/token", struct{}{}, &again, http.StatusOK)
	start := time.Now()
	second, err := a.join("n1", again.Token)
	if err != nil {
		t.Fatalf("join again through A: %v", err)
	}
	ended(t, onB, start, "a stream on replica B made with the certificate a re-join through replica A revoked")
	// The new certificate is served on B.
	if _, err := fetchSecret(b, second, "n1", "echo"); err != nil {
		t.Fatalf("the re-joined certificate on B: %v", err)
	}
}
