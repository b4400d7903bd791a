package authority

import (
	"context"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// nodeCertIndex is the newest node certificate of every active node, for a
// rotation to count the nodes still on the leaving CA (feedIndex).
type nodeCertIndex = feedIndex[store.Node, nodeCert]

// nodeCertSource reads the index's nodes.
var nodeCertSource = indexSource[store.Node, nodeCert]{kind: store.KindNode, list: (*store.Tx).Nodes, get: (*store.Tx).Node,
	read: newestNodeCert, name: func(n store.Node) string { return n.Name }}

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
	if err := x.refresh(ctx, a.cfg.Store, nodeCertSource); err != nil {
		return 0, time.Time{}, err
	}
	for _, c := range x.vals {
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
func (a *Authority) closeNodeCerts() { a.rot.nodeCerts.close() }

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
