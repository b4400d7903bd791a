package xds

import (
	"context"
	"testing"

	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestSameValuesAreNotEncodedAgain: a node handed the same listener value
// again (node configuration keeps a node's routing values while only its
// secrets change) is not validated and hashed again; a new value is, and
// removing the node forgets the digests. The test shows it by changing a
// value behind the server's back, which node configuration never does:
// only a re-encoding would see the change.
func TestSameValuesAreNotEncodedAgain(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	l := &listenerv3.Listener{Name: "https"}
	res := resourcesOf(nodeConfig{identities: []string{"web"}})
	res[resource.ListenerType] = append(res[resource.ListenerType], l)
	if err := f.s.SetNode(ctx, "n1", res, nil); err != nil {
		t.Fatal(err)
	}
	version := func() string {
		t.Helper()
		snap, err := f.snapshot("n1")
		if err != nil {
			t.Fatal(err)
		}
		return snap.GetVersion(resource.ListenerType)
	}
	first := version()

	l.StatPrefix = "changed"
	res = resourcesOf(nodeConfig{identities: []string{"web", "api"}})
	res[resource.ListenerType] = append(res[resource.ListenerType], l)
	if err := f.s.SetNode(ctx, "n1", res, nil); err != nil {
		t.Fatal(err)
	}
	if v := version(); v != first {
		t.Fatalf("the same listener value was encoded again: version %s, then %s", first, v)
	}

	// A new value with the same content as the changed one is encoded.
	res = resourcesOf(nodeConfig{identities: []string{"web"}})
	res[resource.ListenerType] = append(res[resource.ListenerType], &listenerv3.Listener{Name: "https", StatPrefix: "changed"})
	if err := f.s.SetNode(ctx, "n1", res, nil); err != nil {
		t.Fatal(err)
	}
	second := version()
	if second == first {
		t.Fatal("a new listener value with other content kept the old version")
	}

	// After the node is removed, nothing of it is remembered.
	f.remove("n1")
	f.s.allowedMu.RLock()
	kept := len(f.s.routeSums["n1"])
	f.s.allowedMu.RUnlock()
	if kept != 0 {
		t.Fatalf("%d digests kept for a removed node", kept)
	}
}
