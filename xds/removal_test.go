package xds

import (
	"slices"
	"strings"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// openADS opens a SotW ADS stream on c and waits for the answer to a
// wildcard secret request as node, so that the stream is bound and open.
func openADS(f *fixture, c *conn, node string) *call {
	f.t.Helper()
	cl := f.open(c, ads, "StreamAggregatedResources", f.xds)
	cl.send(&discovery.DiscoveryRequest{Node: nodeID(node), TypeUrl: resource.SecretType})
	cl.next()
	return cl
}

// TestRemovedNodeIsCutOff: when the source no longer has a node (removed
// or revoked), every stream of the node ends at once with
// PermissionDenied, its connections are closed, its snapshot, permissions
// and telemetry are dropped, and new streams are refused. Other nodes
// are untouched.
func TestRemovedNodeIsCutOff(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	c1, c2, other := f.nodeConn("web"), f.nodeConn("web"), f.nodeConn("db")
	sotw := openADS(f, c1, "web")
	delta := f.open(c2, sds, "DeltaSecrets", f.xds)
	delta.send(&discovery.DeltaDiscoveryRequest{Node: nodeID("web"), ResourceNamesSubscribe: []string{secretOf("web")}})
	delta.next()
	logs := f.open(c1, alsDesc, "StreamAccessLogs", sinks{s: f.s})
	logs.send(accessLogs("web", "/before"))
	dbStream := openADS(f, other, "db")
	if st := f.s.Status("web"); st.Streams != 2 {
		t.Fatalf("web has %d xDS streams, want 2", st.Streams)
	}
	logs.reads(2) // the message is filed
	if len(logsOf(f.tel, "web")) != 1 {
		t.Fatal("control: web's access log is empty")
	}

	f.remove("web")

	for name, cl := range map[string]*call{"SotW ADS": sotw, "delta SDS": delta, "access log": logs} {
		err := cl.wait()
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "revoked or removed") {
			t.Errorf("%s stream ended with %v, want PermissionDenied", name, err)
		}
	}
	if !c1.isClosed() || !c2.isClosed() {
		t.Error("web's connections stay open")
	}
	if _, err := f.snapshot("web"); err == nil {
		t.Error("web's snapshot is still in the cache")
	}
	if f.s.knownNode("web") || f.s.allowedSecrets("web") != nil || f.s.formerlyAllowed("web", secretOf("revoked")) {
		t.Error("web's permissions outlive it")
	}
	if len(logsOf(f.tel, "web")) != 0 {
		t.Error("web's access logs outlive it")
	}
	if st := f.s.Status("web"); st.Streams != 0 {
		t.Errorf("web has %d streams", st.Streams)
	}
	// A new connection with web's still valid certificate opens nothing.
	if _, err := secretAskers[0].ask(f, f.nodeConn("web"), nodeID("web"), resource.SecretType, nil); status.Code(err) != codes.PermissionDenied {
		t.Errorf("new stream of the removed node: %v, want PermissionDenied", err)
	}

	// db is untouched.
	if dbStream.ended() || other.isClosed() {
		t.Fatalf("db's stream or connection ended: %v", dbStream.err)
	}
	if _, err := f.snapshot("db"); err != nil {
		t.Fatalf("db's snapshot: %v", err)
	}
	dbStream.send(&discovery.DiscoveryRequest{Node: nodeID("db"), TypeUrl: resource.ListenerType})
	dbStream.next()

	// Registered again, web starts afresh: what it lost before its
	// removal is no longer tolerated.
	f.give("web", nodeConfig{identities: []string{"web"}})
	if _, err := secretAskers[0].ask(f, f.nodeConn("web"), nodeID("web"), resource.SecretType, []string{secretOf("web"), secretOf("revoked")}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("a name withdrawn before the removal: %v, want PermissionDenied", err)
	}
}

// TestCloseNode: CloseNode (a node's earlier certificates revoked) ends
// every stream and connection of the node and reports how many streams,
// but keeps the node: it may connect again at once.
func TestCloseNode(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	c, other := f.nodeConn("web"), f.nodeConn("db")
	a, b := openADS(f, c, "web"), openADS(f, c, "web")
	dbStream := openADS(f, other, "db")

	if n := f.s.CloseNode("web"); n != 2 {
		t.Errorf("CloseNode reported %d streams, want 2", n)
	}
	for _, cl := range []*call{a, b} {
		if err := cl.wait(); status.Code(err) != codes.PermissionDenied {
			t.Errorf("stream ended with %v, want PermissionDenied", err)
		}
	}
	if !c.isClosed() {
		t.Error("web's connection stays open")
	}
	if dbStream.ended() || other.isClosed() {
		t.Fatal("db's stream or connection ended")
	}
	got, err := secretAskers[0].ask(f, f.nodeConn("web"), nodeID("web"), resource.SecretType, nil)
	if err != nil || !slices.Equal(got, []string{bundleName, secretOf("web")}) {
		t.Fatalf("after CloseNode, a new connection is served %v, %v", got, err)
	}
	if n := f.s.CloseNode("nobody"); n != 0 {
		t.Errorf("CloseNode of a node without streams: %d", n)
	}
}

// TestUnassignedSecretLeavesOpenStream: an identity taken from a node
// disappears from the answer on its open stream, and the name stays
// requestable (Envoy drains listeners that reference it) but served no
// more.
func TestUnassignedSecretLeavesOpenStream(t *testing.T) {
	f := newFixture(t)
	f.give("web", nodeConfig{identities: []string{"web", "api"}})
	cl := f.open(f.nodeConn("web"), ads, "StreamAggregatedResources", f.xds)
	cl.send(&discovery.DiscoveryRequest{Node: nodeID("web"), TypeUrl: resource.SecretType, ResourceNames: []string{secretOf("web"), secretOf("api")}})
	first := cl.next().(*discovery.DiscoveryResponse)
	if got := namesOf(t, first); !slices.Equal(got, []string{secretOf("api"), secretOf("web")}) {
		t.Fatalf("first answer %v", got)
	}
	// ACK, so that the next answer is a push.
	cl.send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, VersionInfo: first.GetVersionInfo(), ResponseNonce: first.GetNonce(),
		ResourceNames: []string{secretOf("web"), secretOf("api")}})

	f.give("web", nodeConfig{identities: []string{"web"}})
	if got := namesOf(t, cl.next()); !slices.Equal(got, []string{secretOf("web")}) {
		t.Fatalf("pushed %v, want only web's", got)
	}
	if cl.ended() || f.s.Stats().Denied != 0 {
		t.Fatalf("the stream naming the lost secret was refused: %v", cl.err)
	}
}
