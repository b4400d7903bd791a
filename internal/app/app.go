// Package app is meshca's composition root: it builds every part from the
// configuration, wires the concrete types into the interfaces their
// consumers declare, and runs them until the context ends.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/leader"
	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/nodeconfig"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/telemetry"
	"github.com/meshca/meshca/rotation"
	"github.com/meshca/meshca/xds"
)

// KEKFile is the name of the key-encryption key in the data directory.
const KEKFile = "kek"

// Run starts meshca on cfg and blocks until ctx is done or a part fails.
// A cancelled ctx is a clean stop: in-flight admin requests finish, then the
// store is closed.
func Run(ctx context.Context, cfg config.Config, logger *slog.Logger) error {
	a, err := Start(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return a.Wait(ctx)
}

// App is a started meshca: its listeners are bound, nothing is served until
// Wait.
type App struct {
	// Bound addresses; AdminMTLS is empty without admin.mtls_listen.
	Admin, AdminMTLS, XDS string
	// ReplicaID names this process among the replicas sharing the store.
	ReplicaID string

	log   *slog.Logger
	runs  []func(context.Context) error
	close func() error
	reg   *registry.Registry // for benchmarks that call it beside the network path
}

// Option changes how Start builds meshca; for tests.
type Option func(*options)

type options struct {
	clock     clock.Clock
	xdsLimits []func(*xds.Limits)
	// How a replica on etcd probes it and how long it may go without an
	// answer before it stops signing (StoreProbeInterval,
	// StoreContactBound).
	probeEvery, contactBound time.Duration
	leaderTTL                time.Duration
}

// WithClock makes every part read time from c.
func WithClock(c clock.Clock) Option { return func(o *options) { o.clock = c } }

// WithXDSLimits lets edit change the xDS server's limits after they are
// taken from the configuration (tests shrink timeouts with it).
func WithXDSLimits(edit func(*xds.Limits)) Option {
	return func(o *options) { o.xdsLimits = append(o.xdsLimits, edit) }
}

// WithStoreContact changes how often a meshca on etcd probes it and how
// long it may go without an answer before it reports not ready and stops
// signing (defaults StoreProbeInterval and StoreContactBound).
func WithStoreContact(every, bound time.Duration) Option {
	return func(o *options) { o.probeEvery, o.contactBound = every, bound }
}

// WithLeaderTTL sets the lease of a leader's term on etcd (default
// leader.DefaultTTL): a leader that stops renewing it is replaced after
// this long.
func WithLeaderTTL(d time.Duration) Option { return func(o *options) { o.leaderTTL = d } }

// Wait serves until ctx is done or a part fails, then closes the store.
func (a *App) Wait(ctx context.Context) error {
	err := runGroup(ctx, a.runs)
	a.log.Info("meshca stopped")
	if cerr := a.close(); cerr != nil && err == nil {
		err = fmt.Errorf("close store: %w", cerr)
	}
	return err
}

// Start opens the store, loads or creates the CA and binds every listener.
func Start(ctx context.Context, cfg config.Config, logger *slog.Logger, opts ...Option) (_ *App, err error) {
	o := options{clock: clock.Real{}, probeEvery: StoreProbeInterval, contactBound: StoreContactBound}
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	lifetimes, err := cfg.Lifetimes()
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	td, err := identity.TrustDomain(cfg.TrustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust_domain: %w", err)
	}
	keyAlg, err := ca.ParseKeyAlgorithm(cfg.CA.KeyAlgorithm)
	if err != nil {
		return nil, fmt.Errorf("ca.key_algorithm: %w", err)
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return nil, fmt.Errorf("data_dir: %w", err)
	}
	// Bind every listener before anything is created: a server that cannot
	// serve (another meshca already on these ports) must not leave a data
	// directory or a fresh CA behind.
	lns, err := bindListeners(cfg)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil { // a later step failed: nothing serves these
			lns.close()
		}
	}()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	kekPath := filepath.Join(dir, KEKFile)
	if err := kekPresent(dir, kekPath); err != nil {
		return nil, err
	}
	sealer, err := seal.LoadOrCreate(kekPath)
	if err != nil {
		return nil, err
	}
	ops := &opsState{now: o.clock.Now}
	tel := telemetry.New()
	met := metrics.New(ops, o.clock.Now, tel)
	// On etcd a replica probes it and, once it has had no answer for
	// contactBound, reports not ready, refuses to sign and fails every
	// store call at once (nil health on bbolt: the file is local).
	var (
		st     *store.Store
		health *storeHealth
	)
	if cfg.Store.Etcd.Enabled() {
		health = newStoreHealth(func(ctx context.Context) error { return st.Ping(ctx) }, o.probeEvery, o.contactBound, logger)
	}
	st, err = openStore(cfg, dir, sealer, logger, o.clock, met.ObserveCommit, health.check)
	if err != nil {
		return nil, err
	}
	app := &App{log: logger, close: st.Close}
	defer func() {
		if err != nil {
			st.Close()
		}
	}()

	var (
		runs  []func(context.Context) error
		attrs = []any{"data_dir", dir, "trust_domain", td.Name()}
	)
	if health != nil {
		runs = append(runs, health.Run)
	}
	// Every part audits its refusals through one recorder, which sums
	// repeats up.
	refusals, err := denials.New(denials.Config{Store: st, OnDenial: met.ObserveDenial, Clock: o.clock, Logger: logger})
	if err != nil {
		return nil, err
	}
	replicaID := newReplicaID()
	auth, err := authority.New(ctx, authority.Config{
		Store: st, TrustDomain: td, KeyAlgorithm: keyAlg, Lifetimes: lifetimes,
		LintBeforeSigning: cfg.CA.LintBeforeSigning, Denials: refusals, Replica: replicaID,
		Clock: o.clock, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	reg, err := registry.New(ctx, registry.Config{
		Store: st, TrustDomain: td, Issuer: gatedIssuer{Issuer: auth, health: health}, Lifetimes: lifetimes, Denials: refusals,
		Clock: o.clock, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	app.close = func() error {
		// Refusals that came in while the parts stopped, after the
		// recorder's own last flush.
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := refusals.Flush(fctx); err != nil {
			logger.Error("refusal summaries not written", "err", err)
		}
		return st.Close()
	}
	// One server certificate (spiffe://<td>/meshca) for xDS and the mTLS
	// admin API. It names the hosts and addresses nodes are told to dial,
	// which proxyless gRPC nodes verify.
	serverCert, err := auth.ServerCert(cfg.ServerDNSNames(), lifetimes.Server, cfg.ServerIPs()...)
	if err != nil {
		return nil, fmt.Errorf("xds.dns_names / admin.dns_names / xds.ip_sans / xds.advertise: %w", err)
	}
	limits := xdsLimits(cfg.XDS, logger)
	for _, edit := range o.xdsLimits {
		edit(&limits)
	}
	// The node configuration is built from the feed into xdsSrv; the
	// server waits for it before refusing a node it does not know yet.
	var nodes *nodeconfig.Builder
	xdsSrv, err := xds.New(xds.Config{
		Settle:      func(ctx context.Context, node string) { nodes.WaitNode(ctx, node) },
		TrustDomain: td, Auth: nodeAuth{reg: reg}, Joiner: joiner{reg: reg, replicas: st, log: logger}, Signer: csrSigner{reg: reg}, Identities: csrSigner{reg: reg}, Audit: refusals,
		Roots: auth.IssuingCAs, LoadedRoots: auth.LoadedIssuingCAs, ServerCert: serverCert.Get,
		Clock: o.clock, Logger: logger,
		OnPush: met.ObservePush, OnNACK: func(_, typeURL, msg string) { met.ObserveNACK(typeURL, msg) },
		Telemetry: telemetrySink{tel: tel}, Limits: limits,
	})
	if err != nil {
		return nil, err
	}
	ops.reg, ops.auth, ops.xds, ops.store, ops.health = reg, auth, xdsSrv, st, health
	app.reg = reg
	if health != nil {
		health.onLost = func() { logger.Warn("xDS streams closed: etcd unreachable", "nodes", xdsSrv.CloseAll()) }
	}
	// Connections made with a node certificate the node replaced end as
	// the feed reports its record, on every replica.
	certWatch, err := nodeconfig.NewCertWatch(nodeconfig.CertWatchConfig{Store: st, Closer: xdsSrv, Logger: logger})
	if err != nil {
		return nil, err
	}
	runs = append(runs, certWatch.Run)
	// Agents watching their identities learn of a change as the feed
	// reports it, on every replica.
	agentWatch, err := nodeconfig.NewAgentWatch(nodeconfig.AgentWatchConfig{Store: st, Notifier: xdsSrv, Logger: logger})
	if err != nil {
		return nil, err
	}
	runs = append(runs, agentWatch.Run)
	// What each node receives is computed from the store's change feed and
	// handed to the xDS server; every node has a snapshot before it serves.
	nodes, err = nodeconfig.New(nodeconfig.Config{
		Store: st, TrustDomain: td, Trust: trustSource{auth: auth}, Publisher: xdsSrv, Acks: xdsSrv, Clock: o.clock, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	if err := nodes.Sync(ctx); err != nil {
		return nil, err
	}
	runs = append(runs, nodes.Run)
	xdsLn := lns.xds
	runs = append(runs, func(ctx context.Context) error { return xdsSrv.Run(ctx, xdsLn) })
	attrs = append(attrs, "xds", xdsLn.Addr().String())
	app.XDS = xdsLn.Addr().String()
	// This replica registers where nodes reach it, for nodes to fail over.
	self := store.Replica{ID: replicaID, XDS: cfg.AdvertisedXDS(app.XDS), Since: o.clock.Now().UTC()}
	app.ReplicaID = self.ID
	runs = append(runs, func(ctx context.Context) error { return st.RunReplica(ctx, self, nil) })
	if st.Etcd() {
		// A rotation led by another replica counts this one's nodes.
		runs = append(runs, func(ctx context.Context) error { return auth.RunAckReport(ctx, rotationAcks(xdsSrv, nodes)) })
	}
	attrs = append(attrs, "replica", self.ID, "xds_advertised", self.XDS)

	policy := lifetimes.Renewal()
	ren := &renewals{reg: reg, auth: auth, st: st}
	renewer, err := rotation.New(rotation.Config{
		Policy: policy,
		Source: ren, Renewer: ren, Clock: o.clock, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	// Singleton work runs on the leader only, its writes fenced by the
	// term; every replica follows the feed and flushes its own refusal
	// summaries.
	elector, err := leader.New(leader.Config{
		Elections: st, Self: replica(cfg.AdvertisedXDS(xdsLn.Addr().String())), TTL: o.leaderTTL,
		Work: []func(context.Context) error{
			ren.run(renewer), auth.RunCRL,
			func(ctx context.Context) error { return auth.RunCA(ctx, rotationAcks(xdsSrv, nodes)) },
			func(ctx context.Context) error {
				return st.RunPrune(ctx, store.PruneConfig{CertRetention: cfg.Store.CertRetention.D(), Clock: o.clock})
			},
			// A rotation's leaves are re-keyed as the feed reports it.
			reg.RunRekey,
		},
		Clock: o.clock, Logger: logger,
	})
	if err != nil {
		return nil, err
	}
	runs = append(runs, auth.Run, refusals.Run, elector.Run)

	adm, err := admin.New(admin.Config{
		Identities: reg, CSRSigner: reg, Nodes: reg, Reissuer: reg, Revoker: reg, CRLs: auth, Meshes: reg, Connections: connections{srv: xdsSrv}, Pushes: pushWaiter{nodes},
		Authority: auth, Audit: reg, TrustDomain: td.Name(), XDSAddress: self.XDS, Replicas: replicaList{st: st, self: self.ID, rotation: auth.RotationCASetVersion}, Logger: logger,
		Metrics: met.Handler(), Ready: ops.ready, Authorizer: reg, Denials: refusals, Logs: tel, Renewal: policy,
		Leadership: leadership{el: elector}, Clock: o.clock,
	})
	if err != nil {
		return nil, err
	}
	mtls := admin.MTLS(auth, reg, serverCert.Get, o.clock.Now)
	if lns.adminMTLS != nil {
		ops.admin = adm
	}
	for _, l := range []struct {
		key, addr string
		ln        net.Listener
		forceTLS  bool
	}{
		{"admin", cfg.Admin.Listen, lns.admin, false},
		{"admin_mtls", cfg.Admin.MTLSListen, lns.adminMTLS, true},
	} {
		if l.ln == nil {
			continue
		}
		var tlsCfg *tls.Config
		if l.forceTLS || !isLoopback(l.addr) {
			tlsCfg = mtls
		}
		attrs = append(attrs, l.key, l.ln.Addr().String())
		if l.forceTLS {
			app.AdminMTLS = l.ln.Addr().String()
		} else {
			app.Admin = l.ln.Addr().String()
		}
		runs = append(runs, func(ctx context.Context) error { return adm.Run(ctx, l.ln, tlsCfg) })
	}
	issuer := auth.CA().Issuer()
	attrs = append(attrs, "issuer_serial", fmt.Sprintf("%x", issuer.SerialNumber), "issuer_not_after", issuer.NotAfter)
	logger.Info("meshca started", attrs...)
	app.runs = runs
	return app, nil
}

// boundListeners are the sockets of a starting meshca; admin and adminMTLS
// are nil when not configured.
type boundListeners struct{ xds, admin, adminMTLS net.Listener }

// bindListeners binds xds.listen, admin.listen and admin.mtls_listen, or
// none of them: the error names the address that could not be bound.
func bindListeners(cfg config.Config) (_ boundListeners, err error) {
	var lns boundListeners
	defer func() {
		if err != nil {
			lns.close()
		}
	}()
	for _, l := range []struct {
		key, addr string
		ln        *net.Listener
	}{
		{"xds.listen", cfg.XDS.Listen, &lns.xds},
		{"admin.listen", cfg.Admin.Listen, &lns.admin},
		{"admin.mtls_listen", cfg.Admin.MTLSListen, &lns.adminMTLS},
	} {
		if l.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return lns, fmt.Errorf("%s %s: %w (is another meshca running? stop it or choose another address)", l.key, l.addr, err)
		}
		*l.ln = ln
	}
	return lns, nil
}

func (l boundListeners) close() {
	for _, ln := range []net.Listener{l.xds, l.admin, l.adminMTLS} {
		if ln != nil {
			ln.Close()
		}
	}
}

// kekPresent refuses to start on an existing store whose key-encryption key
// is gone: creating a new one would leave every sealed key unreadable.
func kekPresent(dir, kekPath string) error {
	if _, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil {
		return nil // no store yet: the key is created with it
	}
	if _, err := os.Stat(kekPath); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s holds a store but its key-encryption key %s is missing: restore it from backup (without it no private key in the store can be opened)", dir, kekPath)
	}
	return nil
}

// runGroup runs every function until ctx is done or one fails; a failure
// stops the others. A cancelled ctx is a clean exit.
func runGroup(ctx context.Context, runs []func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(runs))
	for _, run := range runs {
		go func() { errc <- run(ctx) }()
	}
	var first error
	for range runs {
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// openStore opens the etcd store when the configuration names endpoints,
// the bbolt file in dir otherwise.
func openStore(cfg config.Config, dir string, sealer *seal.Sealer, logger *slog.Logger, clk clock.Clock, onCommit func([]store.Event, time.Duration), contact func() error) (*store.Store, error) {
	if e := cfg.Store.Etcd; e.Enabled() {
		ec := etcdConfig(e, sealer, clk, logger, onCommit)
		ec.Contact = contact
		st, err := store.OpenEtcd(ec)
		if errors.Is(err, store.ErrKEKMismatch) {
			kek := filepath.Join(dir, KEKFile)
			return nil, fmt.Errorf("%w: copy it over %s (mode 0600), then start again", err, kek)
		}
		return st, err
	}
	return store.Open(store.Config{
		Dir: dir, Sealer: sealer, LockTimeout: cfg.Store.LockTimeout.D(), Logger: logger, OnCommit: onCommit,
	})
}

// etcdConfig is the store's view of store.etcd.
func etcdConfig(e config.Etcd, sealer *seal.Sealer, clk clock.Clock, logger *slog.Logger, onCommit func([]store.Event, time.Duration)) store.EtcdConfig {
	return store.EtcdConfig{
		Endpoints: e.Endpoints, Prefix: e.Prefix, DialTimeout: e.DialTimeout.D(),
		TLS:    store.EtcdTLS{CA: e.TLS.CA, Cert: e.TLS.Cert, Key: e.TLS.Key},
		Sealer: sealer, Clock: clk, Logger: logger, OnCommit: onCommit,
	}
}
