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
	m.admin("POST", api.PathRevoke+"/web?wait=pushed&timeout=5s", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
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
	if took < 300*time.Millisecond || took > 10*time.Second || p.TookMS < 300 {
		t.Fatalf("the wait took %s with a 300ms timeout", took)
	}
	t.Logf("with a node that never acknowledges: %d of %d after %.0f ms", p.Have, p.Nodes, p.TookMS)

	// Without wait, nothing is reported.
	res = api.Revoked{}
	m.admin("POST", api.PathRevoke+"/db", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	if res.Pushed != nil {
		t.Fatalf("pushed reported without wait: %+v", res.Pushed)
	}
}
