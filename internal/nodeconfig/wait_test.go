package nodeconfig

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// fakeAcks says a node is synced once the publisher was handed more than
// base snapshots for it; n3 is not connected.
type fakeAcks struct {
	pub  *fakePublisher
	base map[string]int
	mu   sync.Mutex
	ch   chan struct{}
}

func (a *fakeAcks) Synced(node string) (bool, bool) {
	if node == "n3" {
		return false, false
	}
	return true, a.pub.count(node) > a.base[node]
}

func (a *fakeAcks) AckEvents() <-chan struct{} {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ch
}

func (a *fakeAcks) ack() {
	a.mu.Lock()
	close(a.ch)
	a.ch = make(chan struct{})
	a.mu.Unlock()
}

// TestWaitPushed checks that WaitPushed counts the connected holders of a
// changed identity, returns once each has its new snapshot, and reports
// how far it got when its context ends first.
func TestWaitPushed(t *testing.T) {
	f := newFixture(t, 0)
	f.write(t, node("n1", "web"))
	f.write(t, node("n2", "api"))
	f.write(t, node("n3", "web"))
	f.sync(t)
	f.pub.expect(t, "trust", "set n1", "set n2", "set n3")
	acks := &fakeAcks{pub: f.pub, base: map[string]int{"n1": 1, "n2": 1, "n3": 1}, ch: make(chan struct{})}
	f.b.cfg.Acks = acks

	// Hold n1's build: the wait cannot end before it.
	gate := make(chan struct{})
	f.pub.mu.Lock()
	f.pub.gate["n1"] = gate
	f.pub.mu.Unlock()
	f.run(t)
	f.write(t, ident("web", store.StateActive))
	short, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	p := f.b.WaitPushed(short)
	cancel()
	if p.Complete || p.Have != 0 {
		t.Fatalf("before n1 was built: %+v", p)
	}
	// n3's build is not held: it ends while n1's waits.
	f.pub.expect(t, "building n1", "set n3")
	done := make(chan Pushed, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		done <- f.b.WaitPushed(ctx)
	}()
	f.pub.mu.Lock()
	delete(f.pub.gate, "n1")
	f.pub.mu.Unlock()
	close(gate)
	f.pub.expect(t, "set n1")
	acks.ack()
	select {
	case p := <-done:
		// n2 does not hold web; n3 is not connected.
		if !p.Complete || p.Nodes != 1 || p.Have != 1 {
			t.Fatalf("got %+v, want 1 of 1 connected holders", p)
		}
		t.Logf("pushed to %d of %d connected nodes in %v", p.Have, p.Nodes, p.Took)
	case <-time.After(10 * time.Second):
		t.Fatal("WaitPushed did not return once the holder had its snapshot")
	}
}

// TestIdle checks that the Builder is idle only once every change the feed
// handed over has been published.
func TestIdle(t *testing.T) {
	f := newFixture(t, 0)
	f.write(t, node("n1", "web"))
	f.sync(t)
	f.pub.expect(t, "trust", "set n1")
	if !f.b.Idle() {
		t.Fatal("not idle after Sync with no change since")
	}
	f.write(t, ident("web", store.StateActive))
	if f.b.Idle() {
		t.Fatal("idle with a change not yet handled")
	}
	f.run(t)
	f.pub.expect(t, "set n1")
	for {
		f.b.mu.Lock()
		step := f.b.progress.changed
		f.b.mu.Unlock()
		if f.b.Idle() {
			break
		}
		select {
		case <-step:
		case <-time.After(10 * time.Second):
			t.Fatal("not idle after the change was published")
		}
	}
}
