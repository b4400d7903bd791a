package authority

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// agentCertIndex is, for every active agent node, the unrevoked current
// certificates of the identities it still holds, for a rotation to count
// those from the leaving CA. It reads every node once, then only the
// nodes the change feed names: their own record, or a revocation (or
// removal) of one of the certificates counted, re-read as a whole; a
// certificate newly signed for a node, only the identity it is for. In a
// storm of agent CSRs the latter is every change: re-reading each node's
// every certificate for each of them cost more than signing it.
type agentCertIndex struct {
	mu       sync.Mutex
	sub      *store.Subscription    // nil until the first read, and after close
	nodes    map[string][]agentCert // by agent node
	bySerial map[string]string      // serial -> node, of the certificates in nodes
	// read reads an agent node's certificates, of every identity it
	// holds or of ident alone when not empty; tests wrap it to count
	// reads.
	read func(tx *store.Tx, n store.Node, ident string) ([]agentCert, error)
}

type agentCert struct {
	identity, serial, issuer string
	notAfter                 time.Time
}

// agentCerts counts the current certificates of active agent nodes, for
// identities they still hold, that are unexpired, not revoked and from
// another issuer than issuer; last is when the last of those expires.
// Agents re-key such certificates as soon as they learn the issuer changed
// (nodeapi.IssuerHeader). A rotation asks every second while it waits in
// phase reissuing: only the agent nodes changed since the last call are
// read.
func (a *Authority) agentCerts(ctx context.Context, issuer string, now time.Time) (n int, last time.Time, err error) {
	x := &a.rot.agentCerts
	x.mu.Lock()
	defer x.mu.Unlock()
	if err := x.refresh(ctx, a.cfg.Store); err != nil {
		return 0, time.Time{}, err
	}
	for _, certs := range x.nodes {
		for _, c := range certs {
			if c.issuer == issuer || !c.notAfter.After(now) {
				continue
			}
			n++
			if c.notAfter.After(last) {
				last = c.notAfter
			}
		}
	}
	return n, last, nil
}

// closeAgentCerts stops following the feed.
func (a *Authority) closeAgentCerts() {
	x := &a.rot.agentCerts
	x.mu.Lock()
	defer x.mu.Unlock()
	if x.sub != nil {
		x.sub.Close()
	}
	x.sub, x.nodes, x.bySerial = nil, nil, nil
}

// refresh brings the index up to what the feed has handed over: every
// node on the first call or after the feed dropped changes, else the
// agent nodes the changes since the last call concern.
func (x *agentCertIndex) refresh(ctx context.Context, st *store.Store) error {
	if x.read == nil {
		x.read = readAgentCerts
	}
	all := x.sub == nil
	if all {
		// Subscribe before reading: what commits meanwhile is read again.
		x.sub = st.Subscribe(0)
	}
	changes, resync, err := x.sub.TakeAll()
	if err != nil {
		x.sub, x.nodes, x.bySerial = nil, nil, nil
		return err
	}
	all = all || resync
	if !all && !slices.ContainsFunc(changes, concernsAgentCerts) {
		return nil
	}
	err = st.View(ctx, func(tx *store.Tx) error {
		if all {
			nodes, err := tx.Nodes()
			if err != nil {
				return err
			}
			x.nodes, x.bySerial = map[string][]agentCert{}, map[string]string{}
			for _, n := range nodes {
				if err := x.readNode(tx, n); err != nil {
					return err
				}
			}
			return nil
		}
		changed, signed, err := x.changedNodes(tx, changes)
		if err != nil {
			return err
		}
		for _, name := range changed {
			n, err := tx.Node(name)
			if err != nil && !errors.Is(err, store.ErrNotFound) {
				return err
			}
			for _, c := range x.nodes[name] {
				delete(x.bySerial, c.serial)
			}
			delete(x.nodes, name)
			n.Name = name
			if err := x.readNode(tx, n); err != nil {
				return err
			}
		}
		for _, h := range signed {
			if slices.Contains(changed, h.node) {
				continue // read as a whole above
			}
			if err := x.readIdentity(tx, h.node, h.identity); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// The changes taken are lost: read every node next time.
		x.sub.Close()
		x.sub, x.nodes, x.bySerial = nil, nil, nil
	}
	return err
}

// concernsAgentCerts tells whether c may change the agent certificates
// counted.
func concernsAgentCerts(c store.Change) bool {
	return c.Kind == store.KindNode || c.Kind == store.KindRevocation || c.Kind == store.KindAgentCert
}

// holding is one identity of one agent node.
type holding struct{ node, identity string }

// changedNodes names the nodes to read as a whole, sorted: their record
// changed, or a certificate counted was revoked or removed. signed are the
// identities of nodes that had a certificate signed, not counted yet: only
// their current certificate for that identity may have changed.
func (x *agentCertIndex) changedNodes(tx *store.Tx, changes []store.Change) (changed []string, signed []holding, err error) {
	for _, c := range changes {
		switch c.Kind {
		case store.KindNode:
			changed = append(changed, c.Key)
		case store.KindRevocation, store.KindAgentCert:
			if node, ok := x.bySerial[c.Key]; ok {
				changed = append(changed, node)
				continue
			}
			if c.Kind == store.KindRevocation {
				continue // not a certificate counted: it changes no count
			}
			cert, err := tx.Cert(c.Key)
			if errors.Is(err, store.ErrNotFound) {
				continue // pruned, long expired
			}
			if err != nil {
				return nil, nil, err
			}
			if cert.Node != "" {
				signed = append(signed, holding{node: cert.Node, identity: cert.Identity})
			}
		}
	}
	slices.Sort(changed)
	slices.SortFunc(signed, func(a, b holding) int {
		return cmp.Or(cmp.Compare(a.node, b.node), cmp.Compare(a.identity, b.identity))
	})
	return slices.Compact(changed), slices.Compact(signed), nil
}

// readIdentity indexes node's current certificate for ident in place of
// the one indexed before, if any.
func (x *agentCertIndex) readIdentity(tx *store.Tx, node, ident string) error {
	n, err := tx.Node(node)
	if errors.Is(err, store.ErrNotFound) {
		n = store.Node{Name: node}
	} else if err != nil {
		return err
	}
	kept := slices.DeleteFunc(x.nodes[node], func(c agentCert) bool {
		if c.identity != ident {
			return false
		}
		delete(x.bySerial, c.serial)
		return true
	})
	var certs []agentCert
	if n.Agent && n.State == store.StateActive {
		if certs, err = x.read(tx, n, ident); err != nil {
			return err
		}
	}
	for _, c := range certs {
		x.bySerial[c.serial] = node
	}
	if kept = append(kept, certs...); len(kept) > 0 {
		x.nodes[node] = kept
	} else {
		delete(x.nodes, node)
	}
	return nil
}

// readNode indexes n's certificates; n.State "" (not found) or a node
// that is not an active agent has none.
func (x *agentCertIndex) readNode(tx *store.Tx, n store.Node) error {
	if !n.Agent || n.State != store.StateActive {
		return nil
	}
	certs, err := x.read(tx, n, "")
	if err != nil || len(certs) == 0 {
		return err
	}
	x.nodes[n.Name] = certs
	for _, c := range certs {
		x.bySerial[c.serial] = n.Name
	}
	return nil
}

// readAgentCerts reads an active agent node's unrevoked current
// certificates for the identities it still holds: every one, or only
// ident's when not empty.
func readAgentCerts(tx *store.Tx, n store.Node, ident string) ([]agentCert, error) {
	var hs []store.HolderCert
	if ident == "" {
		var err error
		if hs, err = tx.HolderCertsOfNode(n.Name); err != nil {
			return nil, err
		}
	} else if h, err := tx.HolderCert(ident, n.Name); err == nil {
		hs = append(hs, h)
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}
	var out []agentCert
	for _, h := range hs {
		if !slices.Contains(n.Identities, h.Identity) {
			continue // the agent no longer serves it
		}
		c, err := tx.Cert(h.Serial)
		if errors.Is(err, store.ErrNotFound) {
			continue // pruned, long expired
		}
		if err != nil {
			return nil, err
		}
		if _, err := tx.Revocation(c.Serial); err == nil {
			continue
		} else if !errors.Is(err, store.ErrNotFound) {
			return nil, err
		}
		out = append(out, agentCert{identity: h.Identity, serial: c.Serial, issuer: c.IssuerSerial, notAfter: c.NotAfter})
	}
	return out, nil
}
