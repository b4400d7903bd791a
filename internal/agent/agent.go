package agent

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/nodeapi"
	"github.com/meshca/meshca/rotation"
)

// Defaults of Config.
const (
	// DefaultIdentityPoll is how often the node's identities are asked
	// for while meshca does not push them (no WatchIdentities stream).
	DefaultIdentityPoll = 30 * time.Second
	// DefaultWatchedPoll is how often they are asked for while meshca
	// pushes them: only a fallback.
	DefaultWatchedPoll = 10 * time.Minute
	// callTimeout bounds one call to meshca.
	callTimeout = 30 * time.Second
	// DefaultMaxSigning is how many CSRs an agent has at meshca at once.
	DefaultMaxSigning = 4
)

// DefaultPolicy renews at half of a certificate's life, moved earlier by up
// to a tenth of it.
var DefaultPolicy = rotation.Policy{Fraction: 0.5, Jitter: 0.1}

// Log attribute keys.
const (
	logIdentity = "identity"
	logSerial   = "serial"
	logNotAfter = "not_after"
	logErr      = "err"
)

// Config configures an Agent.
type Config struct {
	// Conn reaches meshca's xDS port with the node's certificate (it must
	// present the current one on every handshake, as the node certificate
	// is renewed beside the agent). Required.
	Conn        grpc.ClientConnInterface
	Node        string               // required: the node name
	TrustDomain spiffeid.TrustDomain // required
	// SDSSocket is the Unix socket path to serve SDS on; empty serves none.
	SDSSocket string
	// WorkloadSocket is the Unix socket path to serve the SPIFFE Workload
	// API on (internal/workload); empty serves none.
	WorkloadSocket string
	// FilesDir, when set, receives <identity>/cert.pem, key.pem and
	// bundle.pem for every identity (internal/agentfiles).
	FilesDir string
	// IdentityPoll is how often the node's identities are asked for
	// while meshca does not push them (default DefaultIdentityPoll);
	// WatchedPoll while it does (default DefaultWatchedPoll).
	IdentityPoll time.Duration
	WatchedPoll  time.Duration
	Policy       rotation.Policy // default DefaultPolicy
	// Backoff spaces retries of failed calls (default 1s doubling to 1m);
	// a failed CSR waits a random time between half of it and all of it,
	// so that agents refused together do not come back together.
	Backoff rotation.Backoff
	// MaxSigning bounds the CSRs this agent has at meshca at once
	// (default DefaultMaxSigning): after a CA switch every identity
	// re-keys at once, and a hundred agents each sending every CSR
	// together would have meshca sign for callers that timed out.
	MaxSigning int
	Clock      clock.Clock  // default the wall clock
	Logger     *slog.Logger // default discard
	Rand       io.Reader    // key and CSR randomness; default crypto/rand
}

// SVID is one identity's current certificate and its key, which never
// left this process.
type SVID struct {
	Identity  string
	ID        spiffeid.ID
	Chain     []*x509.Certificate // leaf first
	ChainPEM  []byte
	Key       crypto.Signer
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	// IssuerSerial names the CA that signed it, as meshca said (empty
	// from a meshca that does not say).
	IssuerSerial string
	// Selectors name the local processes the identity is for (uid:N,
	// gid:N, path:/abs, all of which must match); none: any local caller.
	Selectors []string
}

// State is what the agent serves now. Values are shared: do not modify.
type State struct {
	TrustDomain spiffeid.TrustDomain
	SVIDs       []SVID // sorted by identity
	BundlePEM   []byte // roots; nil until meshca sent them
	CRLPEM      []byte // the CRLs; nil when nothing is revoked
	// Version grows with every change.
	Version uint64
}

// SVID returns the SVID of identity, if the agent holds one.
func (s State) SVID(identity string) (SVID, bool) {
	i := slices.IndexFunc(s.SVIDs, func(v SVID) bool { return v.Identity == identity })
	if i < 0 {
		return SVID{}, false
	}
	return s.SVIDs[i], true
}

// Agent is a running node agent. Create it with New, then Run.
type Agent struct {
	cfg Config
	log *slog.Logger

	mu        sync.Mutex
	svids     map[string]SVID
	selectors map[string][]string // identity -> its selectors, as meshca last named them
	bundle    []byte
	crl       []byte
	issuer    string // the CA meshca last said it issues from
	version   uint64
	changed   chan struct{} // closed and replaced at each change
	// settled is closed and replaced once a change has settled (see
	// announceSettled); announced is the version it was last closed at.
	settled   chan struct{}
	announced uint64

	identitiesWake chan struct{}
	// pushed holds the latest answer meshca pushed on the identity watch
	// (capacity 1, replaced by a newer one); watching tells whether that
	// stream is open and has delivered.
	pushed   chan nodeapi.IdentitiesResponse
	watching atomic.Bool
	files    fileWriter // under mu
	// signing holds a token per CSR at meshca (Config.MaxSigning);
	// renewing counts the identities whose CSR is on its way, waiting for
	// a token or at meshca (see settle).
	signing  chan struct{}
	renewing atomic.Int64

	// While meshca refuses CSRs as too busy, none is sent before
	// busyUntil (see noteBusy).
	busyMu     sync.Mutex
	busyUntil  time.Time
	busyStreak int

	// The roots of the bundle meshca last sent with a certificate.
	rootsMu  sync.Mutex
	rootsPEM string
	roots    *x509.CertPool
}

// New validates cfg and sets defaults.
func New(cfg Config) (*Agent, error) {
	if cfg.Conn == nil || cfg.Node == "" || cfg.TrustDomain.IsZero() {
		return nil, fmt.Errorf("%w: Conn, Node and TrustDomain are required", ErrConfig)
	}
	if cfg.IdentityPoll <= 0 {
		cfg.IdentityPoll = DefaultIdentityPoll
	}
	if cfg.WatchedPoll <= 0 {
		cfg.WatchedPoll = max(DefaultWatchedPoll, cfg.IdentityPoll)
	}
	if cfg.Policy == (rotation.Policy{}) {
		cfg.Policy = DefaultPolicy
	}
	if cfg.Backoff == (rotation.Backoff{}) {
		cfg.Backoff = rotation.Backoff{Min: time.Second, Max: time.Minute}
	}
	if cfg.MaxSigning <= 0 {
		cfg.MaxSigning = DefaultMaxSigning
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	return &Agent{cfg: cfg, log: cfg.Logger, svids: map[string]SVID{}, changed: make(chan struct{}), settled: make(chan struct{}), signing: make(chan struct{}, cfg.MaxSigning),
		identitiesWake: make(chan struct{}, 1), pushed: make(chan nodeapi.IdentitiesResponse, 1)}, nil
}

// Source is what a local server (the SPIFFE Workload API) follows: the
// current state and a channel closed at the next change. *Agent is one.
type Source interface {
	State() (State, <-chan struct{})
}

var _ Source = (*Agent)(nil)

// State returns what the agent serves now, and a channel closed at the
// next change. It is the hook a local server (the SPIFFE Workload API)
// follows.
func (a *Agent) State() (State, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stateLocked(), a.changed
}

func (a *Agent) stateLocked() State {
	s := State{TrustDomain: a.cfg.TrustDomain, BundlePEM: a.bundle, CRLPEM: a.crl, Version: a.version}
	for _, v := range a.svids {
		v.Selectors = a.selectors[v.Identity]
		s.SVIDs = append(s.SVIDs, v)
	}
	slices.SortFunc(s.SVIDs, func(x, y SVID) int {
		switch {
		case x.Identity < y.Identity:
			return -1
		case x.Identity > y.Identity:
			return 1
		}
		return 0
	})
	return s
}

// update changes the state under the lock and wakes every follower.
func (a *Agent) update(change func()) {
	a.mu.Lock()
	defer a.mu.Unlock()
	change()
	a.version++
	if a.cfg.FilesDir != "" {
		a.syncFiles(a.stateLocked())
	}
	close(a.changed)
	a.changed = make(chan struct{})
}

func (a *Agent) setSVID(v SVID) { a.update(func() { a.svids[v.Identity] = v }) }

func (a *Agent) dropSVID(identity string) {
	a.mu.Lock()
	_, held := a.svids[identity]
	a.mu.Unlock()
	if held {
		a.update(func() { delete(a.svids, identity) })
	}
}

// assignments returns the identities meshca last named with their
// selectors; known is false until it first answered.
func (a *Agent) assignments() (selectors map[string][]string, known bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.selectors, a.selectors != nil
}

// setSelectors records the selectors of every identity, announcing a
// change only when one changed.
func (a *Agent) setSelectors(sel map[string][]string) {
	a.mu.Lock()
	same := a.selectors != nil && len(sel) == len(a.selectors)
	for name, s := range sel {
		if old, ok := a.selectors[name]; !ok || !slices.Equal(old, s) {
			same = false
		}
	}
	a.mu.Unlock()
	if !same {
		a.update(func() { a.selectors = sel })
	}
}

func (a *Agent) setTrust(bundle, crl []byte) {
	a.update(func() { a.bundle, a.crl = bundle, crl })
}

// settle returns once no certificate is being signed, or limit after it was
// called: a follower that publishes the state after each change (the SDS
// socket) calls it first, so that a burst of renewals (a CA switch re-keys
// every identity at once) is published as a few states, not one per
// certificate, each rebuilt and sent to the proxy. A single renewal, or
// any other change, is published at once.
func (a *Agent) settle(ctx context.Context, limit time.Duration) {
	var timeout <-chan time.Time
	for {
		// The channel before the count: a renewal that ends after this
		// read closes it.
		a.mu.Lock()
		changed := a.changed
		a.mu.Unlock()
		if a.renewing.Load() == 0 {
			return
		}
		if timeout == nil {
			timeout = a.cfg.Clock.After(limit)
		}
		select {
		case <-changed:
		case <-timeout:
			return
		case <-ctx.Done():
			return
		}
	}
}

// settledState returns the current state and a channel closed at the next
// change, once it has settled (settle): what a follower that rebuilds and
// sends the whole state at each change (the Workload API) follows.
func (a *Agent) settledState() (State, <-chan struct{}) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stateLocked(), a.settled
}

// announceSettled closes the channel of settledState after each change,
// once the change has settled, until ctx ends.
func (a *Agent) announceSettled(ctx context.Context) error {
	for {
		a.mu.Lock()
		version, changed := a.version, a.changed
		pending := version != a.announced
		a.mu.Unlock()
		if !pending {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
				continue
			}
		}
		a.settle(ctx, publishDelay)
		if ctx.Err() != nil {
			return nil
		}
		a.mu.Lock()
		// What changed while settling is announced too: a follower reads
		// the state after the close.
		a.announced = a.version
		close(a.settled)
		a.settled = make(chan struct{})
		a.mu.Unlock()
	}
}

// wakeIdentities makes the identity loop ask meshca now.
func (a *Agent) wakeIdentities() {
	select {
	case a.identitiesWake <- struct{}{}:
	default:
	}
}

// Run serves until ctx ends; context.Canceled is a clean exit (nil). It
// returns an error when the SDS socket cannot be served.
func (a *Agent) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		errc = make(chan error, 4)
	)
	run := func(fn func(context.Context) error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := fn(ctx); err != nil && ctx.Err() == nil {
				errc <- err
				cancel()
			}
		}()
	}
	if a.cfg.SDSSocket != "" {
		srv, err := newSDSServer(a.cfg.SDSSocket, a)
		if err != nil {
			return err
		}
		run(func(ctx context.Context) error { return srv.serve(ctx, a) })
	}
	if a.cfg.WorkloadSocket != "" {
		run(a.announceSettled)
		run(func(ctx context.Context) error { return a.serveWorkload(ctx, a.cfg.WorkloadSocket) })
	}
	run(a.followTrust)
	run(a.followIdentities)
	run(a.watchIdentities)
	wg.Wait()
	close(errc)
	return <-errc
}
