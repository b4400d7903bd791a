package authority

import (
	"context"
	"errors"
	"sync"

	"github.com/meshca/meshca/internal/store"
)

// feedIndex keeps a value per record of one kind: it reads every record
// once, then only the records the change feed names, so that a rotation
// waiting on 10,000 of them does not read them all again after each
// commit. On etcd the feed names a change moments after it commits: a
// record just changed may count as it was for that long, which only makes
// the rotation wait.
type feedIndex[R, V any] struct {
	mu   sync.Mutex
	sub  *store.Subscription // nil until the first read, and after close
	vals map[string]V        // the records read holds a value for
}

// indexSource says how a feedIndex reads its records.
type indexSource[R, V any] struct {
	kind store.Kind
	list func(*store.Tx) ([]R, error)
	get  func(*store.Tx, string) (R, error)
	// read is a record's value; ok is false for a record that is gone
	// (the zero R) or holds none.
	read func(*store.Tx, R) (v V, ok bool, err error)
	name func(R) string
}

// refresh brings the index up to what the feed has handed over: every
// record on the first call or after the feed dropped changes, else the
// records changed since the last call. x.mu is held.
func (x *feedIndex[R, V]) refresh(ctx context.Context, st *store.Store, src indexSource[R, V]) error {
	all := x.sub == nil
	if all {
		// Subscribe before reading: what commits meanwhile is read again.
		x.sub = st.Subscribe(0)
	}
	changed, resync, err := x.sub.Take(src.kind)
	if err != nil {
		x.sub, x.vals = nil, nil
		return err
	}
	all = all || resync
	if !all && len(changed) == 0 {
		return nil
	}
	err = st.View(ctx, func(tx *store.Tx) error {
		if all {
			recs, err := src.list(tx)
			if err != nil {
				return err
			}
			vals := make(map[string]V, len(recs))
			for _, r := range recs {
				if v, ok, err := src.read(tx, r); err != nil {
					return err
				} else if ok {
					vals[src.name(r)] = v
				}
			}
			x.vals = vals
			return nil
		}
		for _, name := range changed {
			r, err := src.get(tx, name)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			v, ok, err := src.read(tx, r)
			if err != nil {
				return err
			}
			if ok {
				x.vals[name] = v
			} else {
				delete(x.vals, name)
			}
		}
		return nil
	})
	if err != nil {
		// The changes taken are lost: read every record next time.
		x.sub.Close()
		x.sub, x.vals = nil, nil
	}
	return err
}

// close stops following the feed.
func (x *feedIndex[R, V]) close() {
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.sub != nil {
		x.sub.Close()
	}
	x.sub, x.vals = nil, nil
}
