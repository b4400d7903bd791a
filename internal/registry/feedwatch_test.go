package registry

import (
	"context"
	"slices"
	"testing"

	"github.com/meshca/meshca/internal/store"
)

// feedWatch reads the store's change feed as node configuration does: the
// registry tells nothing to anyone, it commits, and the feed says what
// changed.
type feedWatch struct{ sub *store.Subscription }

func watchFeed(t *testing.T, st *store.Store) *feedWatch {
	t.Helper()
	w := &feedWatch{sub: st.Subscribe(0)}
	t.Cleanup(w.sub.Close)
	return w
}

// drain returns what was queued so far, without waiting: an Update queues
// its changes before it returns.
func (w *feedWatch) drain() (nodes, identities []string, trust bool) {
	done, cancel := context.WithCancel(context.Background())
	cancel()
	for {
		b, err := w.sub.Next(done)
		if err != nil {
			break
		}
		for _, c := range b.Changes {
			switch c.Kind {
			case store.KindNode:
				nodes = append(nodes, c.Key)
			case store.KindIdentity:
				identities = append(identities, c.Key)
			case store.KindRevocation:
				trust = true
			}
		}
	}
	slices.Sort(nodes)
	slices.Sort(identities)
	return slices.Compact(nodes), slices.Compact(identities), trust
}
