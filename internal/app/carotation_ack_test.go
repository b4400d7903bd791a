package app_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// TestCARotationWaitsForNodeAcks rotates the intermediate with a node
// connected over a real ADS stream that acknowledges only when told: the
// rotation re-issues the node's 720h identity at once, waits while the
// node has not acknowledged it; once it has, meshca's own work is done and
// the rotation waits only for the node to renew its node certificate
// (which chains to the previous intermediate), ending on the next tick
// after that, without waiting for any certificate lifetime.
func TestCARotationWaitsForNodeAcks(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "echo", TTL: "720h"}, nil, http.StatusCreated)
	cert := m.joined("n1", "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn := m.dial(cert)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{secretName(""), secretName("echo")}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	ack := func(r *discovery.DiscoveryResponse) {
		t.Helper()
		if err := stream.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names}); err != nil {
			t.Fatal(err)
		}
	}
	responses := make(chan *discovery.DiscoveryResponse, 16)
	go func() {
		defer close(responses)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			responses <- r
		}
	}()
	recv := func() *discovery.DiscoveryResponse {
		t.Helper()
		select {
		case r, ok := <-responses:
			if !ok {
				t.Fatal("stream ended")
			}
			return r
		case <-time.After(recvTimeout):
			t.Fatal("no push within 10s")
		}
		return nil
	}
	ack(recv())
	caState := func() api.CA {
		var c api.CA
		m.admin("GET", api.PathCA, nil, &c, http.StatusOK)
		return c
	}
	// tick is one step of the rotation loop: the clock moves a second
	// while meshca's loops are parked, and they are parked again after.
	tick := func() { t.Helper(); advance(t, clk, time.Second) }
	start := clk.Now()
	var started api.CA
	m.admin("POST", api.PathCARotate, api.RotateCARequest{}, &started, http.StatusOK)
	tick()
	// Re-issued and pushed; the node holds the push unacknowledged.
	pushed := recv()
	for i := 0; i < 3; i++ {
		tick()
	}
	for len(responses) > 0 {
		pushed = recv() // only the latest counts
	}
	rot := caState().Rotation
	if rot == nil || rot.Reissued != 1 || rot.Leaves != 1 || rot.NodesConnected != 1 || rot.NodesAcked != 0 || !strings.Contains(rot.WaitingFor, "acknowledge") {
		t.Fatalf("rotation while the node has not acknowledged: %+v", rot)
	}
	// Another rotation is refused with what this one waits for.
	var refusal api.Error
	m.admin("POST", api.PathCARotate, api.RotateCARequest{Root: true}, &refusal, http.StatusConflict)
	for _, want := range []string{"in phase reissuing", "acknowledge", "ends by", "--wait", "--emergency"} {
		if !strings.Contains(refusal.Error, want) {
			t.Errorf("refusal %q lacks %q", refusal.Error, want)
		}
	}
	ack(pushed)
	// The ACK crosses the network: wait until the server recorded it.
	for deadline := time.Now().Add(recvTimeout); ; {
		var n api.Node
		m.admin("GET", api.PathNodes+"/n1", nil, &n, http.StatusOK)
		if n.Connection.Acked[resource.SecretType] == pushed.GetVersionInfo() {
			break
		}
		if len(responses) > 0 { // a push that was still on its way
			pushed = recv()
			ack(pushed)
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not record the ACK of version %s within %s: %+v", pushed.GetVersionInfo(), recvTimeout, n.Connection)
		}
	}
	tick()
	rot = caState().Rotation
	if rot == nil || !rot.OwnWorkDone || rot.NodesAcked != 1 || rot.OldNodeCerts != 1 || !strings.Contains(rot.WaitingFor, "renew their node certificate") {
		t.Fatalf("after the node acknowledged, want meshca's own work done and the node's renewal awaited: %+v", rot)
	}
	// The node renews its node certificate, as `meshca bootstrap renew`
	// does; the previous intermediate then has nothing left to vouch for.
	if _, _, err := renewNode(t, ctx, conn); err != nil {
		t.Fatalf("node renewal during the rotation: %v", err)
	}
	// The renewal changed the node's record, so nodeconfig may push the
	// node again; that push awaits the node's ACK like any other.
	var cur api.CA
	for ticks := 1; ; ticks++ {
		tick()
		if cur = caState(); cur.Rotation == nil {
			break
		}
		if ticks == 10 {
			t.Fatalf("rotation not done %d ticks after the node renewed: %+v", ticks, cur.Rotation)
		}
		select {
		case r := <-responses:
			ack(r)
		case <-time.After(time.Second): // no push: the next tick decides
		}
	}
	if cur.Issuer.Serial == "" || cur.LastRotation == nil || cur.LastRotation.Reissued != 1 {
		t.Fatalf("after the rotation: %+v", cur)
	}
	// The rotation's re-issue is counted apart from routine renewals.
	metrics := scrape(t, m)
	if v, ok := sample(t, metrics, `meshca_certificates_renewed_total{by="ca_rotation"}`); !ok || v != 1 {
		t.Errorf("renewals by ca_rotation = %v (present %v), want 1", v, ok)
	}
	if _, ok := sample(t, metrics, `meshca_certificates_renewed_total{by="rotation"}`); ok {
		t.Error("the CA rotation's re-issue was counted as a routine renewal")
	}
	t.Logf("intermediate rotation with a 720h identity and one connected node: done %s of fake time after it started, one tick after the node's ACK and renewal", clk.Now().Sub(start))
}
