package authority

import (
	"context"
	"errors"
	"slices"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// agentScan is the last count of agent holders' certificates from another
// issuer than the one in use: their expiries, so that the count at a later
// time needs no read while nothing was committed.
type agentScan struct {
	pos      uint64 // the feed position it was read at
	issuer   string
	notAfter []time.Time // one per certificate to be re-keyed
}

// agentCerts counts the current certificates of active agent nodes, for
// identities they still hold, that are unexpired, not revoked and from
// another issuer than issuer; last is when the last of those expires.
// Agents re-key such certificates as soon as they learn the issuer changed
// (nodeapi.IssuerHeader). A rotation asks every second while it waits in
// phase reissuing: the store is read again only after something was
// committed.
func (a *Authority) agentCerts(ctx context.Context, issuer string, now time.Time) (n int, last time.Time, err error) {
	pos := a.cfg.Store.FeedPos()
	s := a.rot.agentScan.Load()
	if s == nil || s.pos != pos || s.issuer != issuer {
		if s, err = a.scanAgentCerts(ctx, issuer, pos); err != nil {
			return 0, time.Time{}, err
		}
		a.rot.agentScan.Store(s)
	}
	for _, t := range s.notAfter {
		if !t.After(now) {
			continue
		}
		n++
		if t.After(last) {
			last = t
		}
	}
	return n, last, nil
}

func (a *Authority) scanAgentCerts(ctx context.Context, issuer string, pos uint64) (*agentScan, error) {
	s := &agentScan{pos: pos, issuer: issuer}
	err := a.cfg.Store.View(ctx, func(tx *store.Tx) error {
		s.notAfter = nil
		nodes, err := tx.Nodes()
		if err != nil {
			return err
		}
		for _, n := range nodes {
			if !n.Agent || n.State != store.StateActive {
				continue
			}
			hs, err := tx.HolderCertsOfNode(n.Name)
			if err != nil {
				return err
			}
			for _, h := range hs {
				if !slices.Contains(n.Identities, h.Identity) {
					continue // the agent no longer serves it
				}
				c, err := tx.Cert(h.Serial)
				if err != nil {
					return err
				}
				if c.IssuerSerial == issuer {
					continue
				}
				if _, err := tx.Revocation(c.Serial); err == nil {
					continue
				} else if !errors.Is(err, store.ErrNotFound) {
					return err
				}
				s.notAfter = append(s.notAfter, c.NotAfter)
			}
		}
		return nil
	})
	return s, err
}
