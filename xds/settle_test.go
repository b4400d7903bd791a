package xds

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// A node can connect right after it joined, before this replica built its
// configuration from the feed. The server then waits for the build
// (Config.Settle) instead of refusing the node as revoked; a node the
// build does not publish (removed, revoked, unknown) is still refused,
// and a known node never waits.
func TestUnknownNodeWaitsForItsBuild(t *testing.T) {
	f := newFixture(t)
	var mu sync.Mutex
	var settled []string
	f.s.cfg.Settle = func(_ context.Context, node string) {
		mu.Lock()
		settled = append(settled, node)
		mu.Unlock()
		if node == "fresh" {
			// The build the join queued completes while the call waits.
			f.give("fresh", nodeConfig{identities: []string{"fresh"}})
		}
	}
	calls := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(settled)
	}

	// Joined, not built yet: served once built, with its own secret.
	cl := f.open(f.nodeConn("fresh"), ads, "StreamAggregatedResources", f.xds)
	cl.send(&discovery.DiscoveryRequest{Node: nodeID("fresh"), TypeUrl: resource.SecretType, ResourceNames: []string{secretOf("fresh")}})
	r := cl.next().(*discovery.DiscoveryResponse)
	if len(r.GetResources()) != 1 {
		t.Fatalf("the fresh node was sent %d secrets, want its own", len(r.GetResources()))
	}
	if got := calls(); !slices.Equal(got, []string{"fresh"}) {
		t.Fatalf("settled for %v, want [fresh]", got)
	}

	// Known now: no wait.
	openADS(f, f.nodeConn("fresh"), "fresh")
	if got := calls(); len(got) != 1 {
		t.Fatalf("a known node waited: settled for %v", got)
	}

	// Never built (revoked, removed or unknown): refused after the wait,
	// with the message a revoked node gets, and audited.
	gone := f.open(f.nodeConn("gone"), ads, "StreamAggregatedResources", f.xds)
	err := gone.wait()
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(status.Convert(err).Message(), "was revoked") {
		t.Fatalf("unbuilt node: %v, want PermissionDenied", err)
	}
	if got := calls(); !slices.Equal(got, []string{"fresh", "gone"}) {
		t.Fatalf("settled for %v, want [fresh gone]", got)
	}
	denied := false
	for _, d := range f.audit.all() {
		denied = denied || d.node == "gone"
	}
	if !denied {
		t.Fatal("the refusal of the unbuilt node was not audited")
	}
}
