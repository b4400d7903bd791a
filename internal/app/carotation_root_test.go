package app_test

import (
	"context"
	"crypto/x509"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// ackingNode is a node's ADS stream for its secrets that acknowledges
// every push at once and remembers the last version it received.
type ackingNode struct {
	mu     sync.Mutex
	latest string
	failed chan error
}

func startAckingNode(t *testing.T, ctx context.Context, m *mesh, node string, cert *x509.Certificate, conn *grpc.ClientConn, names ...string) *ackingNode {
	t.Helper()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	a := &ackingNode{failed: make(chan error, 1)}
	go func() {
		for {
			r, err := stream.Recv()
			if err == nil {
				err = stream.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names})
			}
			if err != nil {
				a.failed <- err
				return
			}
			a.mu.Lock()
			a.latest = r.GetVersionInfo()
			a.mu.Unlock()
		}
	}()
	return a
}

// acked is the secrets version the server last recorded as acknowledged
// by node.
func acked(m *mesh, node string) string {
	var n api.Node
	m.admin("GET", api.PathNodes+"/"+node, nil, &n, http.StatusOK)
	return n.Connection.Acked[resource.SecretType]
}

// waitAcked waits until the server has recorded an ACK of another version
// than prev, and of the last push the node received.
func (a *ackingNode) waitAcked(t *testing.T, m *mesh, node, prev string) {
	t.Helper()
	for deadline := time.Now().Add(recvTimeout); ; {
		a.mu.Lock()
		latest := a.latest
		a.mu.Unlock()
		v := acked(m, node)
		if latest != "" && v == latest && v != prev {
			return
		}
		select {
		case err := <-a.failed:
			t.Fatalf("node stream: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not record the node's ACK of %q (after %q) within %s", latest, prev, recvTimeout)
		}
	}
}

// waitCaughtUp waits until the server has recorded the node's ACK of the
// last push it received. Unlike waitAcked it does not expect a new push: a
// rotation step may count the node as pending only because node
// configuration was still rebuilding it, with the same result.
func (a *ackingNode) waitCaughtUp(t *testing.T, m *mesh, node string) {
	t.Helper()
	for deadline := time.Now().Add(recvTimeout); ; {
		a.mu.Lock()
		latest := a.latest
		a.mu.Unlock()
		if v := acked(m, node); latest != "" && v == latest {
			return
		}
		select {
		case err := <-a.failed:
			t.Fatalf("node stream: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("the server did not record the node's ACK of %q within %s", latest, recvTimeout)
		}
	}
}

// TestRootRotationWaitsForNodeCertRenewal rotates the root with one
// connected node that acknowledges every push: the switch needs no grace
// (every node that holds a certificate is connected), the re-issue and its
// acknowledgement follow, then meshca's own work is done and the rotation
// waits for the node to renew its node certificate under the new root; it
// ends on the next step after the node did.
func TestRootRotationWaitsForNodeCertRenewal(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "echo", TTL: "5m"}, nil, http.StatusCreated)
	cert := m.joined("n1", "echo")
	conn := m.dial(cert)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	node := startAckingNode(t, ctx, m, "n1", cert.Leaf, conn, secretName(""), secretName("echo"))
	node.waitAcked(t, m, "n1", "")
	caState := func() api.CA {
		var c api.CA
		m.admin("GET", api.PathCA, nil, &c, http.StatusOK)
		return c
	}
	// tick is one step of the rotation loop: the clock moves a second
	// while meshca's loops are parked, and they are parked again after.
	tick := func() { t.Helper(); advance(t, clk, time.Second) }
	before := caState()
	start := clk.Now()
	m.admin("POST", api.PathCARotate, api.RotateCARequest{Root: true}, nil, http.StatusOK)
	var rot *api.CARotation
	ticks := 0
	for ; ticks < 10; ticks++ {
		prev := acked(m, "n1")
		tick()
		if rot = caState().Rotation; rot != nil && rot.OwnWorkDone {
			break
		}
		if rot != nil && (rot.NodesAcked < rot.NodesConnected || rot.Reissued < rot.Leaves) {
			// A push (the new bundle, then the leaf the leader re-keys
			// from the change feed, off the clock) awaits the node's
			// ACK: let it reach the server.
			node.waitAcked(t, m, "n1", prev)
		}
	}
	if rot == nil || !rot.OwnWorkDone || rot.Phase != "reissuing" || rot.Reissued != 1 || rot.Leaves != 1 || rot.OldNodeCerts != 1 ||
		rot.NodesConnected != 1 || rot.NodesAcked != 1 || !strings.Contains(rot.WaitingFor, "renew their node certificate") || rot.RetireAfter == nil {
		t.Fatalf("after %d ticks: %+v", ticks, rot)
	}
	if ticks > 4 {
		t.Fatalf("meshca's own work took %d ticks", ticks)
	}
	ownDone := clk.Now().Sub(start)

	// The node renews its certificate with the current one, as
	// `meshca bootstrap renew` does.
	resp, _, err := renewNode(t, ctx, conn)
	if err != nil {
		t.Fatalf("node renewal during the rotation: %v", err)
	}
	if strings.Count(resp.BundlePEM, "BEGIN CERTIFICATE") != 2 {
		t.Fatal("the renewed node was not given both roots")
	}
	// The renewal changed the node's record, so nodeconfig rebuilds the
	// node (with the same result: no push); a step taken meanwhile counts
	// the node as pending, and the next one finds it caught up.
	var after api.CA
	for n := 1; ; n++ {
		tick()
		if after = caState(); after.Rotation == nil {
			break
		}
		if n == 10 {
			t.Fatalf("not done %d ticks after the node renewed: %+v", n, after.Rotation)
		}
		if rot := after.Rotation; rot.NodesAcked < rot.NodesConnected {
			node.waitCaughtUp(t, m, "n1")
		}
	}
	if len(after.Roots) != 1 || after.Roots[0].Serial == before.Roots[0].Serial {
		t.Fatalf("not done once the node renewed: %+v", after)
	}
	t.Logf("root rotation, one connected node: meshca's own work done after %s of fake time (%d ticks), done one tick after the node renewed (%s)",
		ownDone, ticks+1, clk.Now().Sub(start))
}
