package nodeconfig

import (
	"context"
	"testing"
	"time"
)

// WaitNode returns only once the node's build, queued by a change the
// feed handed over, has published it: the xDS server waits so before
// refusing a node that connected right after joining. A node no change
// names is not waited for.
func TestWaitNode(t *testing.T) {
	f := newFixture(t, 0)
	f.sync(t)
	f.pub.expect(t, "trust")
	gate := make(chan struct{})
	f.pub.mu.Lock()
	f.pub.gate["fresh"] = gate
	f.pub.mu.Unlock()
	f.run(t)

	f.write(t, node("fresh", "web"))
	done := make(chan struct{})
	go func() {
		defer close(done)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		f.b.WaitNode(ctx, "fresh")
	}()
	f.pub.expect(t, "building fresh")
	// Another node, named by no change, does not wait for fresh's build.
	other, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	f.b.WaitNode(other, "elsewhere")
	if other.Err() != nil {
		t.Fatal("WaitNode of a node no change names waited for its bound")
	}
	cancel()
	select {
	case <-done:
		t.Fatal("WaitNode returned while the node's build was held")
	default:
	}
	f.pub.mu.Lock()
	delete(f.pub.gate, "fresh")
	f.pub.mu.Unlock()
	close(gate)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("WaitNode did not return once the node was built")
	}
	if f.pub.count("fresh") != 1 {
		t.Fatalf("fresh published %d times when WaitNode returned, want 1", f.pub.count("fresh"))
	}
}
