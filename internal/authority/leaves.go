package authority

import (
	"context"
	"slices"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// leafIndex is the current certificate of every active identity, for a
// rotation to count the leaves still under the leaving CA (feedIndex).
type leafIndex struct {
	feedIndex[store.Identity, leaf]
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
	read := x.read
	if read == nil {
		read = readLeaf
	}
	src := indexSource[store.Identity, leaf]{kind: store.KindIdentity, list: (*store.Tx).Identities, get: (*store.Tx).Identity,
		read: read, name: func(id store.Identity) string { return id.Name }}
	if err := x.refresh(ctx, a.cfg.Store, src); err != nil {
		return nil, err
	}
	for name, l := range x.vals {
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
func (a *Authority) closeLeaves() { a.rot.leafIndex.close() }

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
