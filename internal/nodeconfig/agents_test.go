package nodeconfig

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// fakeNotifier records what agents it is told of: a node name, or "*" for
// every agent.
type fakeNotifier struct{ calls chan []string }

func (n *fakeNotifier) AgentsChanged(nodes ...string) {
	c := slices.Clone(nodes)
	slices.Sort(c)
	n.calls <- slices.Compact(c)
}
func (n *fakeNotifier) AllAgentsChanged() { n.calls <- []string{"*"} }

// TestAgentWatchNamesAffectedAgents: from the feed, a node's record names
// the node; an identity change names the agent nodes holding it (not a
// plain holder, nor an agent node that stopped holding it); a switch of
// the CA set's issuer names every agent; a new CA that is not yet the
// issuer, and a change of the set that keeps the issuer, name none.
func TestAgentWatchNamesAffectedAgents(t *testing.T) {
	f := newFixture(t, 0)
	put := func(n store.Node) {
		t.Helper()
		f.write(t, func(tx *store.Tx) error { return tx.PutNode(n) })
	}
	put(store.Node{Name: "agent-1", Kind: "sidecar", State: store.StateActive, Agent: true, Identities: []string{"api", "web"}})
	put(store.Node{Name: "plain-1", Kind: "sidecar", State: store.StateActive, Identities: []string{"web"}})
	notifier := &fakeNotifier{calls: make(chan []string, 10)}
	w, err := NewAgentWatch(AgentWatchConfig{Store: f.st, Notifier: notifier})
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
	next := func(want ...string) {
		t.Helper()
		select {
		case got := <-notifier.calls:
			if !slices.Equal(got, want) {
				t.Fatalf("told of %v, want %v", got, want)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("told of nothing, want %v", want)
		}
	}
	identity := func(name string) {
		t.Helper()
		f.write(t, func(tx *store.Tx) error {
			return tx.PutIdentity(store.Identity{Name: name, SPIFFEID: "spiffe://mesh.local/" + name, State: store.StateActive})
		})
	}

	// The index was read at start: web's holders include agent-1 only
	// among agent nodes.
	identity("web")
	next("agent-1")
	put(store.Node{Name: "agent-2", Kind: "sidecar", State: store.StateActive, Agent: true, Identities: []string{"web"}})
	next("agent-2")
	identity("web")
	next("agent-1", "agent-2")
	// agent-1 loses web; a revoked agent node holds nothing.
	put(store.Node{Name: "agent-1", Kind: "sidecar", State: store.StateActive, Agent: true, Identities: []string{"api"}})
	next("agent-1")
	put(store.Node{Name: "agent-2", Kind: "sidecar", State: store.StateRevoked, Agent: true, Identities: []string{"web"}})
	next("agent-2")
	identity("api")
	next("agent-1")
	// Only plain-1 holds web now: nobody to tell. The next change shows
	// that nothing was sent for it.
	identity("web")
	f.write(t, func(tx *store.Tx) error {
		if err := tx.PutCA(store.CA{Serial: "0b", Role: store.RoleIntermediate, Source: store.SourceGenerated}); err != nil {
			return err
		}
		return tx.SetCASet(store.CASet{IssuerSerial: "0b", RootSerials: []string{"0b"}})
	})
	next("*")
	f.write(t, func(tx *store.Tx) error {
		if err := tx.PutCA(store.CA{Serial: "0c", Role: store.RoleIntermediate, Source: store.SourceGenerated}); err != nil {
			return err
		}
		return tx.SetCASet(store.CASet{IssuerSerial: "0b", RootSerials: []string{"0b", "0c"}})
	})
	identity("api")
	next("agent-1")
}
