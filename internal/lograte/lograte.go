// Package lograte limits how many records a slog handler writes, for logs
// that outsiders can trigger at will (refused connections, malformed
// handshakes): at most Burst records per Interval pass; the first record
// after a suppressed stretch carries how many were left out.
package lograte

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// Defaults.
const (
	DefaultBurst    = 10
	DefaultInterval = time.Minute
)

// KeySuppressed is the attribute that counts records left out before the
// one it is attached to.
const KeySuppressed = "suppressed"

// Config configures a Handler.
type Config struct {
	Burst    int              // records per Interval; default DefaultBurst
	Interval time.Duration    // default DefaultInterval
	Now      func() time.Time // default time.Now
}

// Handler passes at most Burst records per Interval to the handler it
// wraps. Handlers derived with WithAttrs or WithGroup share the budget.
type Handler struct {
	next slog.Handler
	l    *limiter
}

var _ slog.Handler = (*Handler)(nil)

type limiter struct {
	cfg        Config
	mu         sync.Mutex
	start      time.Time
	n          int
	suppressed int
}

// New wraps next.
func New(next slog.Handler, cfg Config) *Handler {
	if cfg.Burst <= 0 {
		cfg.Burst = DefaultBurst
	}
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Handler{next: next, l: &limiter{cfg: cfg}}
}

// Enabled reports whether the wrapped handler takes level.
func (h *Handler) Enabled(ctx context.Context, level slog.Level) bool {
	return h.next.Enabled(ctx, level)
}

// Handle writes rec unless this interval's budget is spent.
func (h *Handler) Handle(ctx context.Context, rec slog.Record) error {
	suppressed, ok := h.l.allow()
	if !ok {
		return nil
	}
	if suppressed > 0 {
		rec = rec.Clone()
		rec.AddAttrs(slog.Int(KeySuppressed, suppressed))
	}
	return h.next.Handle(ctx, rec)
}

// WithAttrs returns a handler with attrs that shares h's budget.
func (h *Handler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &Handler{next: h.next.WithAttrs(attrs), l: h.l}
}

// WithGroup returns a handler with a group that shares h's budget.
func (h *Handler) WithGroup(name string) slog.Handler {
	return &Handler{next: h.next.WithGroup(name), l: h.l}
}

// allow spends one record of the budget; on success it returns how many
// records were suppressed since the last one written.
func (l *limiter) allow() (suppressed int, ok bool) {
	now := l.cfg.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.start.IsZero() || now.Sub(l.start) >= l.cfg.Interval || now.Before(l.start) {
		l.start, l.n = now, 0
	}
	if l.n >= l.cfg.Burst {
		l.suppressed++
		return 0, false
	}
	l.n++
	suppressed, l.suppressed = l.suppressed, 0
	return suppressed, true
}
