package authority

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// nodeCertIndex is the newest node certificate of every active node, for a
// rotation to count the nodes still on the leaving CA. It reads every node
// once, then only the nodes the change feed names, so that a rotation
// waiting on 10,000 connected nodes does not read them all again after
// each commit.
type nodeCertIndex struct {
	mu    sync.Mutex
	sub   *store.Subscription // nil until the first read, and after close
	certs map[string]nodeCert // active nodes that hold a node certificate
}

type nodeCert struct {
	issuer   string
	notAfter time.Time
}

// nodeCerts counts the active nodes whose newest node certificate is
// unexpired and, unless issuer is "", from another issuer than issuer; last
// is when the last of those expires. A rotation asks every second while it
// waits.
func (a *Authority) nodeCerts(ctx context.Context, issuer string, now time.Time) (n int, last time.Time, err error) {
	x := &a.rot.nodeCerts
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.refresh(ctx, a.cfg.Store); err != nil {
		return 0, time.Time{}, err
	}
	for _, c := range x.certs {
		if !c.notAfter.After(now) || (issuer != "" && c.issuer == issuer) {
			continue
		}
		n++
		if c.notAfter.After(last) {
			last = c.notAfter
		}
	}
	return n, last, nil
}

// closeNodeCerts stops following the feed: nothing counts node
// certificates while no rotation is in progress.
func (a *Authority) closeNodeCerts() {
	x := &a.rot.nodeCerts
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.sub != nil {
		x.sub.Close()
	}
	x.sub, x.certs = nil, nil
}

// refresh brings the index up to what the feed has handed over: every
// node on the first call or after the feed dropped changes, else the nodes
// changed since the last call. On etcd the feed names a change moments
// after it commits: a node that just renewed may be counted as still on
// the leaving CA for that long, which only makes the rotation wait.
func (x *nodeCertIndex) refresh(ctx context.Context, st *store.Store) error {
	all := x.sub == nil
	if all {
		// Subscribe before reading: what commits meanwhile is read again.
		x.sub = st.Subscribe(0)
	}
	changed, resync, err := x.sub.Take(store.KindNode)
	if err != nil {
		x.sub, x.certs = nil, nil
		return err
	}
	all = all || resync
	if !all && len(changed) == 0 {
		return nil
	}
	err = st.View(ctx, func(tx *store.Tx) error {
		if all {
			nodes, err := tx.Nodes()
			if err != nil {
				return err
			}
			certs := make(map[string]nodeCert, len(nodes))
			for _, n := range nodes {
				if c, ok, err := newestNodeCert(tx, n); err != nil {
					return err
				} else if ok {
					certs[n.Name] = c
				}
			}
			x.certs = certs
			return nil
		}
		for _, name := range changed {
			n, err := tx.Node(name)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			c, ok, err := newestNodeCert(tx, n)
			if err != nil {
				return err
			}
			if ok {
				x.certs[name] = c
			} else {
				delete(x.certs, name)
			}
		}
		return nil
	})
	if err != nil {
		// The changes taken are lost: read every node next time.
		x.sub.Close()
		x.sub, x.certs = nil, nil
	}
	return err
}

// newestNodeCert is an active node's newest node certificate: named in its
// record, or for a record written before that, the last one issued to it.
func newestNodeCert(tx *store.Tx, n store.Node) (nodeCert, bool, error) {
	if n.Name == "" || n.State != store.StateActive {
		return nodeCert{}, false, nil
	}
	if n.NewestIssuer != "" {
		return nodeCert{issuer: n.NewestIssuer, notAfter: n.NewestNotAfter}, true, nil
	}
	certs, err := tx.CertsFor(nodeSubject(n.Name))
	if err != nil || len(certs) == 0 {
		return nodeCert{}, false, err
	}
	c := certs[len(certs)-1]
	return nodeCert{issuer: c.IssuerSerial, notAfter: c.NotAfter}, true, nil
}
