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
	"github.com/meshca/meshca/internal/testkit"
)

// rotationGrace is the grace a root rotation gives nodes to reconnect
// before it switches issuance (authority's publishGrace).
const rotationGrace = 30 * time.Second

// TestRotationCountsNodesOfEveryReplica runs two replicas on one etcd and
// connects a node over a real ADS stream to the replica that does not
// lead. The leader drives a root rotation: the node's replica reports how
// its nodes stand, and the leader sums the reports. While the node has not
// acknowledged the bundle with the new root, the publishing phase holds,
// past the grace for reconnecting nodes; once it acknowledges, issuance
// switches within a few ticks. In the reissuing phase the node does not
// acknowledge its re-issued leaf: the phase holds again, and moves on
// once the node disconnects.
func TestRotationCountsNodesOfEveryReplica(t *testing.T) {
	e := testkit.StartEtcd(t)
	start := time.Now()
	lead, follow, clocks := startClockedReplicas(t, e, "/meshca-acks", start)
	loops := map[*mesh]int{lead: leaderLoops, follow: replicaLoops}
	// Both clocks move together; a replica's loops are parked before and
	// after each move.
	step := func(d time.Duration) {
		t.Helper()
		for m, n := range loops {
			settleN(t, clocks[m], n)
		}
		for m := range loops {
			clocks[m].Add(d)
		}
		for m, n := range loops {
			settleN(t, clocks[m], n)
		}
	}

	follow.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "echo", TTL: "720h"}, nil, http.StatusCreated)
	cert := follow.joined("n1", "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sctx, closeStream := context.WithCancel(ctx)
	defer closeStream()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(follow.dial(cert)).StreamAggregatedResources(sctx)
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
	recv := func(what string) *discovery.DiscoveryResponse {
		t.Helper()
		select {
		case r, ok := <-responses:
			if !ok {
				t.Fatalf("%s: stream ended", what)
			}
			return r
		case <-time.After(recvTimeout):
			t.Fatalf("%s: no push within %s", what, recvTimeout)
		}
		return nil
	}
	// acked waits until the node's replica recorded the ACK of version.
	acked := func(version string) {
		t.Helper()
		if !pollUntil(recvTimeout, 10*time.Millisecond, func() bool {
			var n api.Node
			follow.admin("GET", api.PathNodes+"/n1", nil, &n, http.StatusOK)
			return n.Connection.Acked[resource.SecretType] == version
		}) {
			t.Fatalf("the replica did not record the ACK of version %s within %s", version, recvTimeout)
		}
	}
	first := recv("first push")
	ack(first)
	acked(first.GetVersionInfo())

	// No rotation: no replica is listed with nodes, whatever reports
	// linger.
	var reps []api.Replica
	lead.admin("GET", api.PathReplicas, nil, &reps, http.StatusOK)
	if len(reps) != 2 || reps[0].Nodes != nil || reps[1].Nodes != nil {
		t.Fatalf("replicas before the rotation: %+v", reps)
	}

	var started api.CA
	lead.admin("POST", api.PathCARotate, api.RotateCARequest{Root: true}, &started, http.StatusOK)
	if started.Rotation == nil || started.Rotation.Phase != "publishing" {
		t.Fatalf("rotation started as %+v", started.Rotation)
	}
	// The leader reads the follower's report at its own tick: a state of
	// the rotation is awaited tick by tick, each tick a second.
	until := func(what string, cond func(*api.CARotation) bool) (*api.CARotation, int) {
		t.Helper()
		for ticks := 0; ; ticks++ {
			var rot *api.CARotation
			if pollUntil(200*time.Millisecond, 10*time.Millisecond, func() bool { rot = caOf(lead).Rotation; return cond(rot) }) {
				return rot, ticks
			}
			if ticks == 20 {
				t.Fatalf("%s: not within %d ticks: %+v", what, ticks, rot)
			}
			step(time.Second)
		}
	}
	// The follower pushes the bundle with the new root; the node holds it
	// unacknowledged. Past the grace for reconnecting nodes the leader,
	// which has no node of its own, still waits for it.
	pushed := recv("bundle with the new root")
	step(2 * rotationGrace)
	for range 5 {
		step(time.Second)
	}
	rot, _ := until("leader counts the follower's node", func(r *api.CARotation) bool {
		return r != nil && r.NodesConnected == 1 && r.NodesAcked == 0 && strings.Contains(r.WaitingFor, "acknowledge the trust bundle")
	})
	if rot.Phase != "publishing" {
		t.Fatalf("the leader switched issuance while the follower's node had not acknowledged the new bundle: %+v", rot)
	}
	for len(responses) > 0 {
		pushed = recv("bundle with the new root") // only the latest counts
	}
	t.Logf("publishing held %s of fake time by a node on the other replica: %s", clocks[lead].Now().Sub(start), rot.WaitingFor)
	// Either replica lists the follower's report beside it: the node the
	// rotation waits for, and where it is.
	for _, m := range []*mesh{lead, follow} {
		var reps []api.Replica
		m.admin("GET", api.PathReplicas, nil, &reps, http.StatusOK)
		byID := map[string]*api.ReplicaNodes{}
		for _, r := range reps {
			byID[r.ID] = r.Nodes
		}
		if n := byID[follow.app.ReplicaID]; n == nil || !n.Reported || n.Connected != 1 || n.Pending != 1 {
			t.Fatalf("replicas as listed by %s: the follower's nodes are %+v, want 1 connected, 1 pending", m.app.ReplicaID, n)
		}
		if n := byID[lead.app.ReplicaID]; n == nil || n.Pending != 0 || n.Connected != 0 {
			t.Fatalf("replicas as listed by %s: the leader's nodes are %+v, want none", m.app.ReplicaID, n)
		}
	}

	ack(pushed)
	acked(pushed.GetVersionInfo())
	_, ticks := until("switch after the node's ACK", func(r *api.CARotation) bool { return r != nil && r.Phase == "reissuing" })
	t.Logf("issuance switched %d tick(s) of 1s after the node on the other replica acknowledged the bundle", ticks)

	// Reissuing: the leaf re-issued under the new CA reaches the node,
	// which does not acknowledge it: the phase holds.
	rot, _ = until("reissuing waits for the node's ACK of its new leaf", func(r *api.CARotation) bool {
		return r != nil && r.Leaves > 0 && r.Reissued == r.Leaves && r.NodesConnected == 1 && r.NodesAcked == 0 && strings.Contains(r.WaitingFor, "acknowledge their certificates")
	})
	for range 5 {
		step(time.Second)
	}
	if rot = caOf(lead).Rotation; rot == nil || rot.OwnWorkDone || rot.Phase != "reissuing" {
		t.Fatalf("reissuing moved on while the follower's node had not acknowledged its new leaf: %+v", rot)
	}
	// The node disconnects: its replica reports no node, and the rotation
	// moves on to waiting for the node to renew its node certificate.
	closeStream()
	rot, ticks = until("reissuing moves on after the node disconnected", func(r *api.CARotation) bool { return r != nil && r.OwnWorkDone })
	if rot.NodesConnected != 0 || rot.OldNodeCerts != 1 || !strings.Contains(rot.WaitingFor, "renew their node certificate") {
		t.Fatalf("after the node disconnected: %+v", rot)
	}
	t.Logf("reissuing moved on %d tick(s) of 1s after the node on the other replica disconnected", ticks)
}
