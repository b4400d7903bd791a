package xds

import (
	"context"
	"fmt"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// maxSwapAllocs bounds what swapping a new bundle into one node's snapshot
// may allocate: a bundle change visits every node, and at 10,000 nodes each
// allocation per node is 10,000 objects of garbage collected while the
// server pushes. The swap reads the snapshot's own index instead of
// copying it (10 allocations per node now, 13 before).
const maxSwapAllocs = 11

// TestSetTrustAllocationsPerNode counts the allocations of a bundle change
// per node holding a snapshot, and checks that every node got the new
// bundle (a swap that did nothing would allocate nothing).
func TestSetTrustAllocationsPerNode(t *testing.T) {
	const nodes = 200
	s := newHandoffServer(t)
	ctx := context.Background()
	if err := s.SetTrust(ctx, bundleSecret(bundleName, "ca-0")); err != nil {
		t.Fatal(err)
	}
	for i := range nodes {
		res := map[string][]types.Resource{resource.SecretType: {tlsSecret(secretOf(fmt.Sprintf("id-%d", i/10)))}}
		if err := s.SetNode(ctx, fmt.Sprintf("node-%d", i), res, nil); err != nil {
			t.Fatal(err)
		}
	}
	bundles := []types.Resource{bundleSecret(bundleName, "ca-1"), bundleSecret(bundleName, "ca-2")}
	swaps := 0
	allocs := testing.AllocsPerRun(10, func() {
		if err := s.SetTrust(ctx, bundles[swaps%2]); err != nil {
			t.Fatal(err)
		}
		swaps++
	})
	last := bundles[(swaps-1)%2]
	for i := range nodes {
		node := fmt.Sprintf("node-%d", i)
		secrets, _ := secretsOf(t, s, node)
		if secrets[bundleName] != last {
			t.Fatalf("%s does not hold the bundle of the last change", node)
		}
		if len(secrets) != 2 {
			t.Fatalf("%s holds %d secrets after the swap, want its identity and the bundle", node, len(secrets))
		}
	}
	per := allocs / nodes
	t.Logf("a bundle change allocates %.1f objects per node (%d nodes)", per, nodes)
	if per > maxSwapAllocs {
		t.Errorf("a bundle change allocates %.1f objects per node, want at most %d", per, maxSwapAllocs)
	}
}
