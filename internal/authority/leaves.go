package authority

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// leafIndex is the current certificate of every active identity, for a
// rotation to count the leaves still under the leaving CA. Like
// nodeCertIndex it reads every identity once, then only the identities
// the change feed names: a rotation that waits on 10,000 leaves being
// re-keyed does not read them all again after each re-key.
type leafIndex struct {
	mu     sync.Mutex
	sub    *store.Subscription // nil until the first read, and after close
	leaves map[string]leaf     // active identities with a current certificate
	// read reads an identity's leaf; tests wrap it to count reads.
	read func(tx *store.Tx, id store.Identity) (leaf, bool, error)
}

// leaf is what a rotation needs of an identity's current certificate.
type leaf struct {
	issuer  string
	created time.Time // the identity's creation
}

// leafScan is what scanLeaves found, with the store followed up to
// sequence seq.
type leafScan struct {
	seq   uint64
	total int      // leaves the rotation moves to the issuer
	stale []string // identities whose leaf is still from another issuer, sorted
}

// scanLeaves counts the active identities' current certificates: those
// not from issuer are stale; total counts them and the ones from issuer of
// identities created before since (when issuance switched), which the
// rotation re-issued. A rotation asks every second while it waits: only
// the identities changed since the last call are read. On etcd the feed
// names a change moments after it commits: a leaf just re-keyed may count
// as stale for that long, which only makes the rotation wait.
func (a *Authority) scanLeaves(ctx context.Context, issuer string, since time.Time) (*leafScan, error) {
	x := &a.rot.leafIndex
	x.mu.Lock()
	defer x.mu.Unlock()
	// Whatever the feed handed over by now is queued before Take.
	scan := &leafScan{seq: a.cfg.Store.FeedSeq()}
	if err := x.refresh(ctx, a.cfg.Store); err != nil {
		return nil, err
	}
	for name, l := range x.leaves {
		switch {
		case l.issuer != issuer:
			scan.stale = append(scan.stale, name)
		case l.created.After(since):
			continue // issued under the new CA from the start
		}
		scan.total++
	}
	slices.Sort(scan.stale)
	return scan, nil
}

// closeLeaves stops following the feed.
func (a *Authority) closeLeaves() {
	x := &a.rot.leafIndex
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.sub != nil {
		x.sub.Close()
	}
	x.sub, x.leaves = nil, nil
}

// refresh brings the index up to what the feed has handed over: every
// identity on the first call or after the feed dropped changes, else the
// identities changed since the last call.
func (x *leafIndex) refresh(ctx context.Context, st *store.Store) error {
	if x.read == nil {
		x.read = readLeaf
	}
	all := x.sub == nil
	if all {
		// Subscribe before reading: what commits meanwhile is read again.
		x.sub = st.Subscribe(0)
	}
	changed, resync, err := x.sub.Take(store.KindIdentity)
	if err != nil {
		x.sub, x.leaves = nil, nil
		return err
	}
	all = all || resync
	if !all && len(changed) == 0 {
		return nil
	}
	err = st.View(ctx, func(tx *store.Tx) error {
		if all {
			ids, err := tx.Identities()
			if err != nil {
				return err
			}
			leaves := make(map[string]leaf, len(ids))
			for _, id := range ids {
				if l, ok, err := x.read(tx, id); err != nil {
					return err
				} else if ok {
					leaves[id.Name] = l
				}
			}
			x.leaves = leaves
			return nil
		}
		for _, name := range changed {
			id, err := tx.Identity(name)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			l, ok, err := x.read(tx, id)
			if err != nil {
				return err
			}
			if ok {
				x.leaves[name] = l
			} else {
				delete(x.leaves, name)
			}
		}
		return nil
	})
	if err != nil {
		// The changes taken are lost: read every identity next time.
		x.sub.Close()
		x.sub, x.leaves = nil, nil
	}
	return err
}

// readLeaf reads an identity's current certificate: ok is false for an
// identity that is gone (zero), inactive or holds none.
func readLeaf(tx *store.Tx, id store.Identity) (leaf, bool, error) {
	if id.Name == "" || id.State != store.StateActive || id.CurrentSerial == "" {
		return leaf{}, false, nil
	}
	c, err := tx.Cert(id.CurrentSerial)
	if err != nil {
		return leaf{}, false, err
	}
	return leaf{issuer: c.IssuerSerial, created: id.CreatedAt}, true, nil
}
