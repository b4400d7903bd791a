package app

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/xds"
)

// opsState answers the metrics' scrape-time questions and the readiness
// check. Its fields are set once the parts exist; scrapes come later.
type opsState struct {
	reg    *registry.Registry
	auth   *authority.Authority
	xds    *xds.Server
	store  *store.Store
	health *storeHealth  // nil on bbolt
	admin  *admin.Server // nil without an mTLS admin listener
	now    func() time.Time
}

var _ metrics.State = (*opsState)(nil)

func (o *opsState) IdentityExpiries() []metrics.Expiry {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ids, err := o.reg.Identities(ctx)
	if err != nil {
		return nil
	}
	out := make([]metrics.Expiry, 0, len(ids))
	for _, st := range ids {
		if st.Identity.State == store.StateActive && st.Cert != nil {
			out = append(out, metrics.Expiry{Name: st.Identity.Name, NotAfter: st.Cert.NotAfter})
		}
	}
	return out
}

func (o *opsState) CAExpiries() []metrics.Expiry {
	c := o.auth.CA()
	out := []metrics.Expiry{{Name: fmt.Sprintf("issuer:%x", c.Issuer().SerialNumber), NotAfter: c.Issuer().NotAfter}}
	for _, r := range c.Roots() {
		out = append(out, metrics.Expiry{Name: fmt.Sprintf("root:%x", r.SerialNumber), NotAfter: r.NotAfter})
	}
	return out
}

func (o *opsState) CRLAge() (time.Duration, bool) { return o.auth.CRLAge() }

func (o *opsState) ConnectedNodes() map[string]int {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	out := map[string]int{}
	ns, err := o.reg.Nodes(ctx)
	if err != nil {
		return out
	}
	for _, n := range ns {
		if o.xds.Status(n.Name).Streams > 0 {
			out[n.Kind]++
		}
	}
	return out
}

func (o *opsState) XDSEvents() map[string]int64 {
	st := o.xds.Stats()
	return map[string]int64{
		"denied": st.Denied, "unauthenticated": st.Unauthenticated, "auth_failures": st.AuthFailures,
		"invalid_configs": st.InvalidConfigs, "joins": st.Joins, "joins_refused": st.JoinsRefused,
		"connections_refused": st.ConnectionsRefused, "connections_evicted": st.ConnectionsEvicted,
		"connections_over_address_limit": st.ConnectionsOverAddressLimit, "connections_over_node_limit": st.ConnectionsOverNodeLimit,
		"csrs_refused": st.CSRsRefused, "csrs_abandoned": st.CSRsAbandoned,
	}
}

func (o *opsState) Connections() []metrics.Connections {
	st := o.xds.Stats()
	out := []metrics.Connections{
		{Listener: "xds", Open: st.OpenConnections, Peak: st.PeakConnections},
		{Listener: "xds_unauthenticated", Open: st.OpenUnauthenticated, Peak: st.PeakUnauthenticated},
	}
	if o.admin != nil {
		open, peak := o.admin.MTLSConnections()
		out = append(out, metrics.Connections{Listener: "admin_mtls", Open: open, Peak: peak})
	}
	return out
}

// ready reports whether meshca can do its job: the store answers (on
// etcd: a probe was answered within StoreContactBound), the CA can issue
// (its issuer is valid and within its lifetime), and the xDS server is
// serving.
func (o *opsState) ready(ctx context.Context) error {
	if o.health != nil {
		// On etcd the probe is the round trip; a read here would hang
		// for as long as etcd is away.
		if err := o.health.check(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	} else if err := o.store.View(ctx, func(tx *store.Tx) error { _, err := tx.CASet(); return err }); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	issuer := o.auth.CA().Issuer()
	if now := o.now(); !now.Before(issuer.NotAfter) || now.Before(issuer.NotBefore) {
		return errors.New("CA: the issuing certificate is not valid now")
	}
	if !o.xds.Serving() {
		return errors.New("xDS: not serving")
	}
	return nil
}
