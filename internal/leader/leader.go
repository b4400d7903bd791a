// Package leader runs meshca's singleton work on one replica at a time.
//
// Several replicas share one store; some work must be done by one of them
// only: renewing certificates before they expire, re-signing the CRL, and
// driving a CA rotation. An Elector campaigns for leadership through the
// store (an etcd election held by a session lease; on bbolt the process
// always leads) and, while it leads, runs that work with a context that
// carries the term's fence: every write the work makes commits only while
// the term lasts, so a replica that lost the lease without noticing (a
// pause longer than the lease, a partition) cannot land a late write. The
// work stops when the term ends, and the replica campaigns again.
//
// Everything else (issuance on request, the admin API, xDS, node
// configuration, the feed consumers) runs on every replica.
package leader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// Defaults of Config.
const (
	// DefaultTTL is the lease of a term: a leader that stops renewing it
	// is replaced after at most this long.
	DefaultTTL = 10 * time.Second
	// DefaultRetry is the wait before campaigning again after an error.
	DefaultRetry = time.Second
	// resignTimeout bounds handing the term over at shutdown.
	resignTimeout = 5 * time.Second
)

// Log attribute keys.
const (
	logReplica = "replica"
	logAddress = "address"
	logErr     = "err"
)

// Elections is where replicas stand for leader: the store.
type Elections interface {
	// Campaign blocks until the caller leads or ctx ends; the Term ends
	// by Resign or on its own (Done).
	Campaign(ctx context.Context, c store.Candidate, ttl time.Duration) (*store.Term, error)
	// Leader returns the candidate that leads now; ok is false when none
	// does.
	Leader(ctx context.Context) (c store.Candidate, ok bool, err error)
}

var _ Elections = (*store.Store)(nil)

// Config configures New.
type Config struct {
	Elections Elections       // required
	Self      store.Candidate // required ID: this replica as status shows it
	// Work runs while this replica leads, each function on its own
	// goroutine, with a context that carries the term's fence and ends
	// with the term. A function returns nil when its context ends; an
	// error stops Run (and meshca) as any failing part does.
	Work []func(context.Context) error
	// OnChange, when set, is called with true when this replica becomes
	// leader and with false when it stops leading, on Run's goroutine.
	OnChange func(leading bool)
	TTL      time.Duration // default DefaultTTL
	Retry    time.Duration // default DefaultRetry
	Clock    clock.Clock   // default clock.Real{}
	Logger   *slog.Logger  // default discard
}

// Elector campaigns for this replica and runs the singleton work while it
// leads.
type Elector struct {
	cfg Config

	mu      sync.Mutex
	leading bool
}

// New checks cfg and fills its defaults.
func New(cfg Config) (*Elector, error) {
	if cfg.Elections == nil {
		return nil, errors.New("leader: no elections configured")
	}
	if cfg.Self.ID == "" {
		return nil, errors.New("leader: the replica has no ID")
	}
	if cfg.TTL <= 0 {
		cfg.TTL = DefaultTTL
	}
	if cfg.Retry <= 0 {
		cfg.Retry = DefaultRetry
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Elector{cfg: cfg}, nil
}

// Leading tells whether this replica leads now.
func (e *Elector) Leading() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.leading
}

// Self is this replica as it stands for leader.
func (e *Elector) Self() store.Candidate { return e.cfg.Self }

// Leader returns the replica that leads now, as the store knows it; ok is
// false when none does (between two terms).
func (e *Elector) Leader(ctx context.Context) (store.Candidate, bool, error) {
	return e.cfg.Elections.Leader(ctx)
}

// Run campaigns, leads, and campaigns again when a term ends, until ctx
// ends (then it resigns, so that another replica takes over at once), the
// store is closed, or the work fails.
func (e *Elector) Run(ctx context.Context) error {
	log := e.cfg.Logger.With(logReplica, e.cfg.Self.ID)
	for {
		term, err := e.cfg.Elections.Campaign(ctx, e.cfg.Self, e.cfg.TTL)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return nil
			}
			log.Warn("leader election failed; will campaign again", logErr, err)
			select {
			case <-ctx.Done():
				return nil
			case <-e.cfg.Clock.After(e.cfg.Retry):
			}
			continue
		}
		log.Info("leading: singleton work starts", logAddress, e.cfg.Self.Address)
		err = e.lead(ctx, term)
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), resignTimeout)
		if rerr := term.Resign(rctx); rerr != nil {
			log.Warn("resigning failed; the term ends when its lease expires", logErr, rerr)
		}
		cancel()
		log.Info("no longer leading: singleton work stopped")
		if err != nil {
			return err
		}
		if ctx.Err() != nil {
			return nil
		}
	}
}

// lead runs the work until the term or ctx ends, or a part fails.
func (e *Elector) lead(ctx context.Context, term *store.Term) error {
	wctx, cancel := context.WithCancel(store.WithFence(ctx, term.Fence))
	defer cancel()
	go func() {
		select {
		case <-term.Done():
			cancel()
		case <-wctx.Done():
		}
	}()
	e.setLeading(true)
	defer e.setLeading(false)
	errc := make(chan error, len(e.cfg.Work))
	for _, w := range e.cfg.Work {
		go func() { errc <- w(wctx) }()
	}
	var first error
	for range e.cfg.Work {
		err := <-errc
		if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, store.ErrNotLeader) {
			continue
		}
		if first == nil {
			first = fmt.Errorf("leader work: %w", err)
			cancel()
		}
	}
	if first == nil {
		// Work that ended early leaves the term held until it ends:
		// resigning now would only hand it to another replica for nothing.
		<-wctx.Done()
	}
	return first
}

func (e *Elector) setLeading(v bool) {
	e.mu.Lock()
	e.leading = v
	e.mu.Unlock()
	if e.cfg.OnChange != nil {
		e.cfg.OnChange(v)
	}
}
