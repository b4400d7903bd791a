package rotation

import (
	"context"
	"errors"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

// Cert is one certificate the loop keeps fresh.
type Cert struct {
	Name      string // identity name
	Serial    string
	NotBefore time.Time
	NotAfter  time.Time
	// Stale marks a certificate from another CA than the one that issues
	// now, which no CA rotation is re-issuing (a rotation re-issues every
	// leaf itself, at full speed): it is renewed now, Burst at a time,
	// whatever its renewal point.
	Stale bool
}

// Source lists the certificates to keep fresh: each active identity's
// current certificate.
type Source interface {
	Certs(ctx context.Context) ([]Cert, error)
}

// Renewer replaces an identity's current certificate with a new one, records
// and audits it, and pushes it to the nodes that hold the identity.
type Renewer interface {
	Renew(ctx context.Context, name string) (Cert, error)
}

// Clock is the loop's only source of time: Now for decisions, After to
// wait for the next one. internal/clock's clocks satisfy it, so tests
// advance a fake exactly when the loop is parked.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

// Config configures a Loop.
type Config struct {
	Policy  Policy
	Backoff Backoff
	Source  Source  // required
	Renewer Renewer // required
	Clock   Clock   // default: the wall clock
	Logger  *slog.Logger
	// Burst is how many renewals run back to back before the loop pauses
	// for Spread: a restart after downtime finds many certificates due at
	// once and must not renew them all in one go. Defaults 20 and 1s.
	Burst  int
	Spread time.Duration
	// MaxSleep bounds how long the loop sleeps before it lists the
	// certificates again (new identities appear this way). Default 30s.
	MaxSleep time.Duration
}

// Loop renews certificates at their renewal point.
type Loop struct {
	cfg Config
	log *slog.Logger

	mu    sync.Mutex
	retry map[string]retryState // identity -> failed renewal of this serial

	renewed, failed, alarms atomic.Int64
}

type retryState struct {
	serial  string
	attempt int
	at      time.Time
}

// Stats are the loop's counters since start.
type Stats struct {
	Renewed  int64 // successful renewals
	Failed   int64 // failed renewal attempts
	Alarms   int64 // failures with less than a quarter of the lifetime left
	Retrying int   // identities whose last renewal failed
}

// New validates cfg and fills defaults.
func New(cfg Config) (*Loop, error) {
	if cfg.Source == nil || cfg.Renewer == nil {
		return nil, errors.New("rotation: Source and Renewer are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 20
	}
	if cfg.Spread <= 0 {
		cfg.Spread = time.Second
	}
	if cfg.MaxSleep <= 0 {
		cfg.MaxSleep = 30 * time.Second
	}
	cfg.Policy = cfg.Policy.normalized()
	return &Loop{cfg: cfg, log: cfg.Logger, retry: map[string]retryState{}}, nil
}

// Stats returns the counters.
func (l *Loop) Stats() Stats {
	l.mu.Lock()
	n := len(l.retry)
	l.mu.Unlock()
	return Stats{Renewed: l.renewed.Load(), Failed: l.failed.Load(), Alarms: l.alarms.Load(), Retrying: n}
}

// Run renews due certificates until ctx is done. On start it renews what is
// already past its renewal point, Burst at a time.
func (l *Loop) Run(ctx context.Context) error {
	for {
		start := l.cfg.Clock.Now()
		wake := start.Add(l.Step(ctx))
		// Sleep until an absolute time: renewals may have taken a while, and
		// the wait counts from the start of the round.
		select {
		case <-ctx.Done():
			return nil
		case <-l.cfg.Clock.After(wake.Sub(l.cfg.Clock.Now())):
		}
	}
}

// Step runs one round: it renews up to Burst due certificates and returns
// how long to wait before the next round.
func (l *Loop) Step(ctx context.Context) time.Duration {
	certs, err := l.cfg.Source.Certs(ctx)
	if err != nil {
		l.log.Error("rotation: cannot list certificates", "err", err)
		return l.cfg.Backoff.Next(1, time.Time{}, time.Time{})
	}
	now := l.cfg.Clock.Now()
	next := l.cfg.MaxSleep
	var due []Cert
	l.mu.Lock()
	for _, c := range certs {
		at := l.cfg.Policy.RenewAt(c.NotBefore, c.NotAfter, c.Serial)
		if c.Stale && at.After(now) {
			at = now
		}
		if r, ok := l.retry[c.Name]; ok {
			if r.serial != c.Serial {
				delete(l.retry, c.Name) // renewed meanwhile by someone else
			} else if r.at.After(at) {
				at = r.at
			}
		}
		if !now.Before(at) {
			due = append(due, c)
		} else if d := at.Sub(now); d < next {
			next = d
		}
	}
	l.mu.Unlock()
	// Closest to expiry first.
	sort.Slice(due, func(i, j int) bool { return due[i].NotAfter.Before(due[j].NotAfter) })
	if len(due) > l.cfg.Burst {
		due = due[:l.cfg.Burst]
		next = l.cfg.Spread
	}
	for _, c := range due {
		if ctx.Err() != nil {
			return 0
		}
		l.renew(ctx, c, now)
	}
	if len(due) > 0 && next > l.cfg.Spread {
		// Something was due: look again soon, in case the burst was full or
		// a renewal failed.
		next = min(next, l.cfg.Spread)
	}
	return next
}

func (l *Loop) renew(ctx context.Context, c Cert, now time.Time) {
	fresh, err := l.cfg.Renewer.Renew(ctx, c.Name)
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		delete(l.retry, c.Name)
		l.renewed.Add(1)
		l.log.Info("certificate renewed", "identity", c.Name, "old_serial", c.Serial, "serial", fresh.Serial, "not_after", fresh.NotAfter)
		return
	}
	l.failed.Add(1)
	r := l.retry[c.Name]
	if r.serial != c.Serial {
		r = retryState{serial: c.Serial}
	}
	r.attempt++
	r.at = now.Add(l.cfg.Backoff.Next(r.attempt, now, c.NotAfter))
	l.retry[c.Name] = r
	attrs := []any{"identity", c.Name, "serial", c.Serial, "not_after", c.NotAfter, "attempt", r.attempt, "retry_at", r.at, "err", err}
	if Alarming(now, c.NotBefore, c.NotAfter) {
		l.alarms.Add(1)
		l.log.Error("certificate renewal failing close to expiry", attrs...)
		return
	}
	l.log.Warn("certificate renewal failed; will retry", attrs...)
}
