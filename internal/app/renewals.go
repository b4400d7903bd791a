package app

import (
	"context"
	"errors"
	"sync"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/rotation"
)

// renewals adapts the registry to the rotation loop. The loop lists every
// certificate at each round, and a round comes as often as the next
// renewal is due (every fraction of a second with 10,000 identities): the
// list is read from the store once, then only the identities the change
// feed names are read again.
type renewals struct {
	reg  *registry.Registry
	auth *authority.Authority
	st   *store.Store

	mu    sync.Mutex
	sub   *store.Subscription // nil until the first round, and after close
	certs map[string]renewalCert
}

// renewalCert is an active identity's current certificate.
type renewalCert struct {
	cert   rotation.Cert
	issuer string
}

var (
	_ rotation.Source  = (*renewals)(nil)
	_ rotation.Renewer = (*renewals)(nil)
)

func (r *renewals) Certs(ctx context.Context) ([]rotation.Cert, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.refresh(ctx); err != nil {
		return nil, err
	}
	out := make([]rotation.Cert, 0, len(r.certs))
	for _, c := range r.certs {
		rc := c.cert
		rc.Stale = r.auth.Stale(c.issuer)
		out = append(out, rc)
	}
	return out, nil
}

// refresh brings certs up to what the feed has handed over: every identity
// on the first round or after the feed dropped changes, else those changed
// since the last round (a renewal made here is kept at once by Renew, as
// the feed may name it moments later on etcd).
func (r *renewals) refresh(ctx context.Context) error {
	all := r.sub == nil
	if all {
		// Subscribe before reading: what commits meanwhile is read again.
		r.sub = r.st.Subscribe(0)
	}
	changed, resync, err := r.sub.Take(store.KindIdentity)
	if err != nil {
		r.close()
		return err
	}
	all = all || resync
	if all {
		ids, err := r.reg.Identities(ctx)
		if err != nil {
			r.close() // read everything again next round
			return err
		}
		r.certs = make(map[string]renewalCert, len(ids))
		for _, st := range ids {
			r.put(st)
		}
		return nil
	}
	for _, name := range changed {
		st, err := r.reg.Identity(ctx, name)
		if errors.Is(err, registry.ErrNotFound) {
			delete(r.certs, name)
			continue
		}
		if err != nil {
			r.close()
			return err
		}
		r.put(st)
	}
	return nil
}

func (r *renewals) put(st registry.Status) {
	name := st.Identity.Name
	if st.Identity.State != store.StateActive || st.Cert == nil {
		delete(r.certs, name)
		return
	}
	r.certs[name] = renewalCert{
		cert:   rotation.Cert{Name: name, Serial: st.Cert.Serial, NotBefore: st.Cert.NotBefore, NotAfter: st.Cert.NotAfter},
		issuer: st.Cert.IssuerSerial,
	}
}

// close stops following the feed; r.mu is held.
func (r *renewals) close() {
	if r.sub != nil {
		r.sub.Close()
	}
	r.sub, r.certs = nil, nil
}

// run runs the rotation loop and stops following the feed when it ends
// (this replica is no longer the leader).
func (r *renewals) run(loop *rotation.Loop) func(context.Context) error {
	return func(ctx context.Context) error {
		defer func() {
			r.mu.Lock()
			r.close()
			r.mu.Unlock()
		}()
		return loop.Run(ctx)
	}
}

func (r *renewals) Renew(ctx context.Context, name string) (rotation.Cert, error) {
	st, err := r.reg.ReissueIdentity(ctx, name, "rotation")
	if err != nil {
		return rotation.Cert{}, err
	}
	// Kept at once: on etcd the feed names the change moments later, and
	// the next round must not find the old certificate due again.
	r.mu.Lock()
	if r.certs != nil {
		r.put(st)
	}
	r.mu.Unlock()
	return rotation.Cert{Name: name, Serial: st.Cert.Serial, NotBefore: st.Cert.NotBefore, NotAfter: st.Cert.NotAfter}, nil
}
