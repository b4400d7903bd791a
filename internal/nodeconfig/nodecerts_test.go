package nodeconfig

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// closeCall is one CloseNodeExcept call.
type closeCall struct {
	node string
	keep []string
}

// fakeCloser records what it is asked to close.
type fakeCloser struct{ calls chan closeCall }

func (c *fakeCloser) CloseNodeExcept(node string, keep ...string) int {
	c.calls <- closeCall{node, slices.Clone(keep)}
	return 1
}

// TestCertWatchClosesConnectionsOfReplacedCertificates: a node's record
// changed on the feed makes the watch keep only the connections made with
// its current certificate (and a renewed one not used yet); a revoked node
// is left to the Builder's RemoveNode.
func TestCertWatchClosesConnectionsOfReplacedCertificates(t *testing.T) {
	f := newFixture(t, 0)
	closer := &fakeCloser{calls: make(chan closeCall, 10)}
	w, err := NewCertWatch(CertWatchConfig{Store: f.st, Closer: closer})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	put := func(n store.Node) {
		t.Helper()
		err := f.st.Update(ctx, func(tx *store.Tx) error {
			if err := tx.PutNode(n); err != nil {
				return err
			}
			_, err := tx.Append(store.Event{Action: "node.test", Node: n.Name})
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	next := func() closeCall {
		t.Helper()
		select {
		case c := <-closer.calls:
			return c
		case <-time.After(10 * time.Second):
			t.Fatal("no connections closed")
			return closeCall{}
		}
	}
	node := store.Node{Name: "n1", Kind: "sidecar", State: store.StateActive, CertSerial: "0a"}
	put(node)
	if c := next(); c.node != "n1" || !slices.Equal(c.keep, []string{"0a"}) {
		t.Fatalf("after a join: %+v", c)
	}
	node.NextSerial = "0b" // renewed, not used yet: both stay
	put(node)
	if c := next(); !slices.Equal(c.keep, []string{"0a", "0b"}) {
		t.Fatalf("after a renewal: %+v", c)
	}
	put(store.Node{Name: "gone", Kind: "sidecar", State: store.StateRevoked, CertSerial: "0c"})
	put(store.Node{Name: "n2", Kind: "sidecar", State: store.StateActive, CertSerial: "0d"})
	if c := next(); c.node != "n2" {
		t.Fatalf("a revoked node's connections were handled here: %+v", c)
	}
}
