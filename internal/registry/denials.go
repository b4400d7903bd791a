package registry

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/text"
)

// Refusals are audited in aggregate, since anyone who can reach a port can
// cause them: the first refusal of a source (actor, node, identity) for an
// action and reason is recorded at once, so an operator sees it; the
// repeats are counted and written as one record per key at the end of the
// interval ("41 more refusals between T1 and T2"). A key quiet for a whole
// interval is forgotten. Exact counts go to Config.OnDenial (metrics) as
// they happen.
const (
	// DefaultDenialInterval is how often repeated refusals are summed up.
	DefaultDenialInterval = time.Minute
	// maxDenialKeys bounds the sources and reasons tracked at once; more
	// are folded into one bucket per action, written as actor "other".
	maxDenialKeys = 128
)

// Widths of refused input in audit records: one long refused name must not
// widen every row of `meshca audit list`.
const (
	deniedNameWidth   = 48
	deniedActorWidth  = 64
	deniedDetailWidth = 300
)

// Denial reasons, the label of the refusal counters.
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

// denialKey is what makes a refusal news: its action, its source, and what
// was wrong (the detail without digits, so that "try again in 3s" and "in
// 2s", or two timestamps, are one reason).
type denialKey struct{ action, actor, node, identity, reason, what string }

type denialBucket struct {
	outcome, serial string
	count           int // repeats not yet recorded
	since, until    time.Time
	last            string // detail of the latest repeat
}

// denials holds the refusals not yet recorded. Its zero value is ready.
type denials struct {
	mu      sync.Mutex
	buckets map[denialKey]*denialBucket
	other   map[string]*denialBucket // overflow, by action
}

// deny records a refused or failed request: at once when its source and
// reason are new, else in the next summary. A failure to record is logged:
// the request is refused either way.
func (r *Registry) deny(ctx context.Context, ev store.Event) {
	if ev.Outcome == "" {
		ev.Outcome = store.OutcomeDenied
	}
	ev.Actor = text.Clip(ev.Actor, deniedActorWidth)
	ev.Node = text.Clip(ev.Node, deniedNameWidth)
	ev.Identity = text.Clip(ev.Identity, deniedNameWidth)
	ev.Detail = text.Clip(ev.Detail, deniedDetailWidth)
	reason := denialReason(ev)
	if r.cfg.OnDenial != nil {
		r.cfg.OnDenial(ev.Action, ev.Outcome, reason)
	}
	now := r.cfg.Clock.Now()
	if !r.denials.add(ev, reason, now) {
		return
	}
	if _, err := r.cfg.Store.Append(context.WithoutCancel(ctx), ev); err != nil {
		r.refusalLog.Error("audit record not written", "action", ev.Action, "err", err)
		r.denials.add(ev, reason, now) // counted again: the summary carries it
	}
}

// Deny records a refusal or failure of another part (the authority),
// aggregated like every refusal.
func (r *Registry) Deny(ctx context.Context, ev store.Event) { r.deny(ctx, ev) }

// limitedDeny is deny: every refusal is aggregated the same way.
func (r *Registry) limitedDeny(ctx context.Context, ev store.Event) { r.deny(ctx, ev) }

// RecordDenial audits a request that another part (the xDS server, the
// admin API) refused, aggregated like every refusal.
func (r *Registry) RecordDenial(ctx context.Context, action, node, detail string) {
	r.deny(ctx, store.Event{Action: action, Node: node, Detail: detail})
}

// add counts ev and reports whether it is the first of its key, to be
// recorded at once.
func (d *denials) add(ev store.Event, reason string, now time.Time) bool {
	k := denialKey{ev.Action, ev.Actor, ev.Node, ev.Identity, reason, withoutDigits(ev.Detail)}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.buckets == nil {
		d.buckets, d.other = map[denialKey]*denialBucket{}, map[string]*denialBucket{}
	}
	b := d.buckets[k]
	if b == nil {
		if len(d.buckets) < maxDenialKeys {
			d.buckets[k] = &denialBucket{outcome: ev.Outcome, serial: ev.Serial}
			return true
		}
		if b = d.other[ev.Action]; b == nil {
			b = &denialBucket{outcome: ev.Outcome}
			d.other[ev.Action] = b
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
func (d *denials) take() []store.Event {
	d.mu.Lock()
	defer d.mu.Unlock()
	var evs []store.Event
	for k, b := range d.buckets {
		if b.count == 0 {
			delete(d.buckets, k) // quiet for an interval: a new refusal is news again
			continue
		}
		evs = append(evs, store.Event{
			Action: k.action, Actor: k.actor, Node: k.node, Identity: k.identity, Serial: b.serial, Outcome: b.outcome,
			Detail: text.Clip(fmt.Sprintf("%d more %s between %s and %s; last: %s", b.count, plural(b.outcome, b.count),
				b.since.UTC().Format(time.RFC3339), b.until.UTC().Format(time.RFC3339), b.last), deniedDetailWidth+100),
		})
		b.count = 0
	}
	for action, b := range d.other {
		evs = append(evs, store.Event{
			Action: action, Actor: "other", Outcome: b.outcome,
			Detail: text.Clip(fmt.Sprintf("%d %s between %s and %s from other sources or reasons (more than %d tracked at once); last: %s",
				b.count, plural(b.outcome, b.count), b.since.UTC().Format(time.RFC3339), b.until.UTC().Format(time.RFC3339), maxDenialKeys, b.last), deniedDetailWidth+100),
		})
		delete(d.other, action)
	}
	return evs
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

// FlushDenials writes the summaries of refusals not yet recorded, in one
// transaction.
func (r *Registry) FlushDenials(ctx context.Context) error {
	evs := r.denials.take()
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
		return fmt.Errorf("registry: record refusal summaries: %w", err)
	}
	return nil
}

// finalFlushTimeout bounds the flush of refusal summaries at shutdown.
const finalFlushTimeout = 5 * time.Second

// RunDenials writes the refusal summaries every DenialInterval, and once
// more when ctx ends.
func (r *Registry) RunDenials(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			// Bounded: a store that cannot be reached (etcd gone) must
			// not keep the server from stopping.
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), finalFlushTimeout)
			defer cancel()
			return r.FlushDenials(fctx)
		case <-r.cfg.Clock.After(r.cfg.DenialInterval):
			if err := r.FlushDenials(ctx); err != nil {
				r.refusalLog.Error("refusal summaries not written", "err", err)
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

// denialReason classifies a refusal by its detail into a few reasons, for
// the metrics label and the aggregation key. Quoted names are ignored, so
// a caller cannot pick its own reason by naming a node "revoked".
func denialReason(ev store.Event) string {
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

// clip shortens s to n bytes on a UTF-8 boundary.
func clip(s string, n int) string { return text.Clip(s, n) }
