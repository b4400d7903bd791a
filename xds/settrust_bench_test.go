package xds

import (
	"context"
	"fmt"
	"runtime"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// BenchmarkSetTrust swaps a new trust bundle into the snapshots of 1,000
// nodes that hold one identity secret each, with no stream open: the
// server's own cost of a bundle change, before go-control-plane encodes
// any response. allocs/node and B/node are what each node's swap
// allocates, the garbage a bundle change leaves per node.
func BenchmarkSetTrust(b *testing.B) {
	const nodes = 1000
	s := newHandoffServer(b)
	ctx := context.Background()
	if err := s.SetTrust(ctx, bundleSecret(bundleName, "ca-0")); err != nil {
		b.Fatal(err)
	}
	for i := range nodes {
		id := fmt.Sprintf("id-%d", i/10)
		res := map[string][]types.Resource{resource.SecretType: {tlsSecret(secretOf(id))}}
		if err := s.SetNode(ctx, fmt.Sprintf("node-%d", i), res, nil); err != nil {
			b.Fatal(err)
		}
	}
	bundles := []types.Resource{bundleSecret(bundleName, "ca-1"), bundleSecret(bundleName, "ca-2")}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	n := 0
	for b.Loop() {
		if err := s.SetTrust(ctx, bundles[n%2]); err != nil {
			b.Fatal(err)
		}
		n++
	}
	runtime.ReadMemStats(&after)
	swaps := float64(n * nodes)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/swaps, "ns/node")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/swaps, "allocs/node")
	b.ReportMetric(float64(after.TotalAlloc-before.TotalAlloc)/swaps, "B/node")
}
