package denials

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/lograte"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/text"
)

const (
	// DefaultInterval is how often repeated refusals are summed up.
	DefaultInterval = time.Minute
	// maxKeys bounds the sources and reasons tracked at once; more are
	// folded into one bucket per action, written as actor "other".
	maxKeys = 128
	// finalFlushTimeout bounds the flush of summaries when Run ends.
	finalFlushTimeout = 5 * time.Second
)

// Widths of refused input in audit records: one long refused name must not
// widen every row of `meshca audit list`.
const (
	nameWidth   = 48
	actorWidth  = 64
	detailWidth = 300
)

// Reasons, the label of the refusal counters.
const (
	ReasonRateLimited = "rate_limited"
	ReasonRevoked     = "revoked"
	ReasonExpired     = "expired"
	ReasonToken       = "token"
	ReasonUntrusted   = "untrusted_certificate"
	ReasonNotAllowed  = "not_allowed"
	ReasonUnknown     = "unknown"
	ReasonInvalid     = "invalid"
	ReasonLint        = "lint"
	ReasonFailed      = "failed"
)

// Config configures a Recorder.
type Config struct {
	Store *store.Store // required
	// Interval is how often repeated refusals are summed up in one audit
	// record per source and reason (default DefaultInterval).
	Interval time.Duration
	// OnDenial, when set, counts every refusal or failure exactly, as it
	// happens: the audit log holds them only in aggregate. reason is one of
	// the Reason constants. It must be quick: it runs on the refusing
	// caller's goroutine.
	OnDenial func(action, outcome, reason string)
	Clock    clock.Clock
	Logger   *slog.Logger
}

// Recorder records refusals and sums their repeats up. Its methods are safe
// for concurrent use.
type Recorder struct {
	cfg Config
	log *slog.Logger // rate limited: refusals can come in floods

	mu      sync.Mutex
	buckets map[key]*bucket
	other   map[string]*bucket // overflow, by action
}

// key is what makes a refusal news: its action, its source, and what was
// wrong (the detail without digits, so that "try again in 3s" and "in
// 2s", or two timestamps, are one reason).
type key struct{ action, actor, node, identity, reason, what string }

type bucket struct {
	outcome, serial string
	count           int // repeats not yet recorded
	since, until    time.Time
	last            string // detail of the latest repeat
}

// New validates cfg and returns a Recorder.
func New(cfg Config) (*Recorder, error) {
	if cfg.Store == nil {
		return nil, errors.New("denials: Store is required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Recorder{cfg: cfg, log: slog.New(lograte.New(cfg.Logger.Handler(), lograte.Config{Now: cfg.Clock.Now})),
		buckets: map[key]*bucket{}, other: map[string]*bucket{}}, nil
}

// Deny records a refused (or, with Outcome failed, a failed) request: at
// once when its source and reason are new, else in the next summary. A
// failure to record is logged: the request is refused either way. It does
// not end with the caller's ctx.
func (r *Recorder) Deny(ctx context.Context, ev store.Event) {
	if ev.Outcome == "" {
		ev.Outcome = store.OutcomeDenied
	}
	ev.Actor = text.Clip(ev.Actor, actorWidth)
	ev.Node = text.Clip(ev.Node, nameWidth)
	ev.Identity = text.Clip(ev.Identity, nameWidth)
	ev.Detail = text.Clip(ev.Detail, detailWidth)
	reason := reasonOf(ev)
	if r.cfg.OnDenial != nil {
		r.cfg.OnDenial(ev.Action, ev.Outcome, reason)
	}
	now := r.cfg.Clock.Now()
	if !r.add(ev, reason, now) {
		return
	}
	if _, err := r.cfg.Store.Append(context.WithoutCancel(ctx), ev); err != nil {
		r.log.Error("audit record not written", "action", ev.Action, "err", err)
		r.add(ev, reason, now) // counted again: the summary carries it
	}
}

// RecordDenial records a request refused by node (or by a peer without
// one, node ""), as Deny does.
func (r *Recorder) RecordDenial(ctx context.Context, action, node, detail string) {
	r.Deny(ctx, store.Event{Action: action, Node: node, Detail: detail})
}

// add counts ev and reports whether it is the first of its key, to be
// recorded at once.
func (r *Recorder) add(ev store.Event, reason string, now time.Time) bool {
	k := key{ev.Action, ev.Actor, ev.Node, ev.Identity, reason, withoutDigits(ev.Detail)}
	r.mu.Lock()
	defer r.mu.Unlock()
	b := r.buckets[k]
	if b == nil {
		if len(r.buckets) < maxKeys {
			r.buckets[k] = &bucket{outcome: ev.Outcome, serial: ev.Serial}
			return true
		}
		if b = r.other[ev.Action]; b == nil {
			b = &bucket{outcome: ev.Outcome}
			r.other[ev.Action] = b
		}
	}
	if b.count == 0 {
		b.since = now
	}
	b.count++
	b.until, b.last = now, ev.Detail
	return false
}

// take returns the summary records due and starts a new interval.
func (r *Recorder) take() []store.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	var evs []store.Event
	for k, b := range r.buckets {
		if b.count == 0 {
			delete(r.buckets, k) // quiet for an interval: a new refusal is news again
			continue
		}
		evs = append(evs, store.Event{
			Action: k.action, Actor: k.actor, Node: k.node, Identity: k.identity, Serial: b.serial, Outcome: b.outcome,
			Detail: text.Clip(fmt.Sprintf("%d more %s between %s and %s; last: %s", b.count, plural(b.outcome, b.count),
				b.since.UTC().Format(time.RFC3339), b.until.UTC().Format(time.RFC3339), b.last), detailWidth+100),
		})
		b.count = 0
	}
	for action, b := range r.other {
		evs = append(evs, store.Event{
			Action: action, Actor: "other", Outcome: b.outcome,
			Detail: text.Clip(fmt.Sprintf("%d %s between %s and %s from other sources or reasons (more than %d tracked at once); last: %s",
				b.count, plural(b.outcome, b.count), b.since.UTC().Format(time.RFC3339), b.until.UTC().Format(time.RFC3339), maxKeys, b.last), detailWidth+100),
		})
		delete(r.other, action)
	}
	return evs
}

// tracked is how many sources and reasons are held now.
func (r *Recorder) tracked() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.buckets)
}

func plural(outcome string, n int) string {
	word := "refusal"
	if outcome == store.OutcomeFailed {
		word = "failure"
	}
	if n == 1 {
		return word
	}
	return word + "s"
}

// Flush writes the summaries of refusals not yet recorded, in one
// transaction.
func (r *Recorder) Flush(ctx context.Context) error {
	evs := r.take()
	if len(evs) == 0 {
		return nil
	}
	err := r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		for _, ev := range evs {
			if _, err := tx.Append(ev); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("denials: record refusal summaries: %w", err)
	}
	return nil
}

// Run writes the summaries every Interval, and once more when ctx ends.
func (r *Recorder) Run(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			// Bounded: a store that cannot be reached (etcd gone) must
			// not keep the server from stopping.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			defer cancel()
			return r.Flush(fctx)
		case <-r.cfg.Clock.After(r.cfg.Interval):
			if err := r.Flush(ctx); err != nil {
				r.log.Error("refusal summaries not written", "err", err)
			}
		}
	}
}

func withoutDigits(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= '0' && r <= '9' {
			return -1
		}
		return r
	}, s)
}

// quoted matches Go-quoted strings, the names a caller chose.
var quoted = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// reasonOf classifies a refusal by its detail into a few reasons, for the
// metrics label and the aggregation key. Quoted names are ignored, so a
// caller cannot pick its own reason by naming a node "revoked".
func reasonOf(ev store.Event) string {
	d := strings.ToLower(quoted.ReplaceAllString(ev.Detail, `""`))
	has := func(subs ...string) bool {
		for _, s := range subs {
			if strings.Contains(d, s) {
				return true
			}
		}
		return false
	}
	if ev.Outcome == store.OutcomeFailed {
		if has("lint") {
			return ReasonLint
		}
		return ReasonFailed
	}
	switch {
	case has("rate limit", "too many", "too often", "try again"):
		return ReasonRateLimited
	case has("revoked"):
		return ReasonRevoked
	case has("expired"):
		return ReasonExpired
	case has("not registered", "not found", "no such"):
		return ReasonUnknown
	case has("token"):
		return ReasonToken
	case has("does not verify", "x509:", "signed by unknown", "not issued by"):
		return ReasonUntrusted
	case has("not a node identity", "no admin access", "not assigned", "not issued to", "does not match", "permission denied", "not allowed"):
		return ReasonNotAllowed
	}
	return ReasonInvalid
}
