package app_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshca/meshca/internal/api"
)

// TestRevokeWaitsUntilPushed checks wait=pushed over the admin API: the
// revocation answers once the connected node that acknowledges has the new
// CRL and its other holder's secret is withdrawn, counting only connected
// nodes; a node that never acknowledges is reported missing when the
// timeout passes; a malformed wait changes nothing.
func TestRevokeWaitsUntilPushed(t *testing.T) {
	m := startMesh(t, nil)
	for _, id := range []string{"echo", "web", "db"} {
		m.addIdentity(id)
	}
	srvNode := m.joined("server-node", "echo")
	cliNode := m.joined("client-node", "web", "db")
	m.joined("offline-node", "db") // never connects: not counted
	server := subscribe(t, m, "server-node", srvNode, secretName(""), secretName("echo"))
	client := subscribe(t, m, "client-node", cliNode, secretName(""), secretName("web"), secretName("db"))
	server.next()
	client.next()

	// A malformed wait is refused before anything is revoked.
	var e api.Error
	m.admin("POST", api.PathRevoke+"/web?wait=acked", api.RevokeRequest{Reason: "test"}, &e, http.StatusBadRequest)
	m.admin("POST", api.PathRevoke+"/web?wait=pushed&timeout=2h", api.RevokeRequest{Reason: "test"}, &e, http.StatusBadRequest)

	var res api.Revoked
	// The wait ends as soon as both nodes have the change; the timeout is
	// only a ceiling for a loaded machine.
	m.admin("POST", api.PathRevoke+"/web?wait=pushed&timeout=30s", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	p := res.Pushed
	if p == nil || !p.Complete || p.Nodes != 2 || p.Have != 2 || p.Missing != 0 {
		t.Fatalf("pushed = %+v, want 2 of 2 connected nodes", p)
	}
	t.Logf("revoked web: CRL at %d of %d connected nodes in %.1f ms", p.Have, p.Nodes, p.TookMS)
	// Both nodes were sent the change before the answer: it is queued on
	// their streams now.
	for name, pr := range map[string]*proxy{"server-node": server, "client-node": client} {
		select {
		case <-pr.updates:
		default:
			t.Fatalf("%s: no update had arrived when the revocation answered", name)
		}
	}

	// A node that receives but never acknowledges: the wait ends at its
	// timeout and says so.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	mute := m.joined("mute-node", "db")
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(mute)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "mute-node"}, TypeUrl: resource.SecretType,
		ResourceNames: []string{secretName(""), secretName("db")}}); err != nil {
		t.Fatal(err)
	}
	first, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	// ACK the first answer only, so that the node counts as connected and
	// following secrets.
	if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: first.GetTypeUrl(), VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce(),
		ResourceNames: []string{secretName(""), secretName("db")}}); err != nil {
		t.Fatal(err)
	}
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				return
			}
		}
	}()
	start := time.Now()
	res = api.Revoked{}
	m.admin("POST", api.PathRevoke+"/echo?wait=pushed&timeout=300ms", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	took := time.Since(start)
	p = res.Pushed
	if p == nil || p.Complete || p.Missing < 1 || p.Have+p.Missing != p.Nodes {
		t.Fatalf("pushed = %+v, want the mute node missing", p)
	}
	// The answer came only once the timeout had passed: the request began
	// before meshca set its deadline, so its round trip is at least the
	// timeout whatever the load. took_ms is meshca's own figure for the
	// wait, which starts a moment after the deadline is set (a loaded
	// machine can make it 299.7 ms for a 300 ms timeout): it lies within
	// the round trip, and is not compared with the timeout.
	if took < 300*time.Millisecond || took > 30*time.Second || p.TookMS > float64(took.Microseconds())/1000 {
		t.Fatalf("the wait took %s (meshca reports %.1f ms) with a 300ms timeout", took, p.TookMS)
	}
	t.Logf("with a node that never acknowledges: %d of %d after %.1f ms (round trip %s, timeout 300ms)", p.Have, p.Nodes, p.TookMS, took.Round(time.Millisecond))

	// Without wait, nothing is reported.
	res = api.Revoked{}
	m.admin("POST", api.PathRevoke+"/db", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	if res.Pushed != nil {
		t.Fatalf("pushed reported without wait: %+v", res.Pushed)
	}
}
