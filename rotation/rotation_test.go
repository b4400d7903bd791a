package rotation_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/rotation"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestRenewAtFixed(t *testing.T) {
	nb := t0
	tests := []struct {
		name     string
		notAfter time.Time
		fraction float64
		want     time.Time
	}{
		{"half of an hour", nb.Add(time.Hour), 0.5, nb.Add(30 * time.Minute)},
		{"two thirds of a day", nb.Add(24 * time.Hour), 2.0 / 3, nb.Add(16 * time.Hour)},
		{"zero falls back to half", nb.Add(time.Hour), 0, nb.Add(30 * time.Minute)},
		{"one falls back to half", nb.Add(time.Hour), 1, nb.Add(30 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at := rotation.RenewAt(nb, tt.notAfter, tt.fraction)
			if !at.Equal(tt.want) {
				t.Fatalf("RenewAt = %s, want %s", at, tt.want)
			}
			if rotation.Due(at.Add(-time.Nanosecond), nb, tt.notAfter, tt.fraction) || !rotation.Due(at, nb, tt.notAfter, tt.fraction) {
				t.Fatal("Due disagrees with RenewAt")
			}
		})
	}
}

func TestPolicyJitterBoundsAndSpread(t *testing.T) {
	tests := []struct {
		name   string
		policy rotation.Policy
		lo, hi float64 // bounds as fractions of the lifetime
	}{
		{"defaults", rotation.Policy{}, 0.4, 0.5},
		{"two thirds, 5%", rotation.Policy{Fraction: 2.0 / 3, Jitter: 0.05}, 2.0/3 - 0.05, 2.0 / 3},
		{"negative jitter means none", rotation.Policy{Fraction: 0.8, Jitter: -1}, 0.8, 0.8},
		{"zero jitter means none", rotation.Policy{Fraction: 0.5}, 0.5, 0.5},
		{"jitter larger than the fraction is clamped", rotation.Policy{Fraction: 0.1, Jitter: 0.5}, 0.05, 0.1},
	}
	life := time.Hour
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			first, last := t0.Add(life), t0
			for i := 0; i < 2000; i++ {
				serial := fmt.Sprintf("%032x", i*7919)
				at := tt.policy.RenewAt(t0, t0.Add(life), serial)
				if at.Before(t0.Add(time.Duration(tt.lo*float64(life)))) || at.After(t0.Add(time.Duration(tt.hi*float64(life)))) {
					t.Fatalf("serial %s renews at %s, outside [%.3f, %.3f] of the lifetime", serial, at.Sub(t0), tt.lo, tt.hi)
				}
				if again := tt.policy.RenewAt(t0, t0.Add(life), serial); !again.Equal(at) {
					t.Fatal("renewal point is not a function of the serial")
				}
				first, last = minTime(first, at), maxTime(last, at)
			}
			// 2000 certificates issued together spread over most of the window.
			if spread := last.Sub(first); spread < time.Duration(0.9*(tt.hi-tt.lo)*float64(life)) || tt.hi == tt.lo && spread != 0 {
				t.Fatalf("renewals spread over %s only", spread)
			}
		})
	}
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

func TestBackoff(t *testing.T) {
	b := rotation.Backoff{Min: time.Second, Max: time.Minute}
	far := t0.Add(24 * time.Hour)
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 32 * time.Second, time.Minute, time.Minute}
	for i, w := range want {
		if got := b.Next(i+1, t0, far); got != w {
			t.Fatalf("attempt %d: %s, want %s", i+1, got, w)
		}
	}
	// Close to expiry the wait shrinks to a tenth of what is left.
	if got := b.Next(10, t0, t0.Add(100*time.Second)); got != 10*time.Second {
		t.Fatalf("near expiry: %s, want 10s", got)
	}
	if got := b.Next(10, t0, t0.Add(time.Second)); got != time.Second {
		t.Fatalf("at the edge: %s, want the minimum", got)
	}
}

func TestAlarming(t *testing.T) {
	nb, na := t0, t0.Add(time.Hour)
	if rotation.Alarming(nb.Add(44*time.Minute), nb, na) {
		t.Fatal("alarm with 16m of 60m left")
	}
	if !rotation.Alarming(nb.Add(46*time.Minute), nb, na) {
		t.Fatal("no alarm with 14m of 60m left")
	}
}

// fakeCA is an in-memory Source and Renewer on a clock.
type fakeCA struct {
	mu      sync.Mutex
	clock   clock.Clock
	ttl     time.Duration
	certs   map[string]rotation.Cert
	n       int
	fail    map[string]bool
	renewed []string
}

func newFakeCA(c clock.Clock, ttl time.Duration, names ...string) *fakeCA {
	f := &fakeCA{clock: c, ttl: ttl, certs: map[string]rotation.Cert{}, fail: map[string]bool{}}
	for _, n := range names {
		f.certs[n] = f.issue(n)
	}
	return f
}

func (f *fakeCA) issue(name string) rotation.Cert {
	f.n++
	nb := f.clock.Now().Add(-time.Minute)
	return rotation.Cert{Name: name, Serial: fmt.Sprintf("%x", f.n*104729), NotBefore: nb, NotAfter: nb.Add(f.ttl)}
}

func (f *fakeCA) Certs(context.Context) ([]rotation.Cert, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := make([]rotation.Cert, 0, len(f.certs))
	for _, c := range f.certs {
		out = append(out, c)
	}
	return out, nil
}

func (f *fakeCA) Renew(_ context.Context, name string) (rotation.Cert, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail[name] {
		return rotation.Cert{}, errors.New("store unavailable")
	}
	c := f.issue(name)
	f.certs[name] = c
	f.renewed = append(f.renewed, name)
	return c, nil
}

func (f *fakeCA) current(name string) rotation.Cert {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.certs[name]
}

func newLoop(t *testing.T, f *fakeCA, c clock.Clock, burst int) *rotation.Loop {
	t.Helper()
	l, err := rotation.New(rotation.Config{Source: f, Renewer: f, Clock: c, Burst: burst, Spread: time.Second, MaxSleep: 30 * time.Second,
		Backoff: rotation.Backoff{Min: time.Second, Max: time.Minute}})
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func TestStepRenewsAtTheRenewalPoint(t *testing.T) {
	clk := clock.NewFake(t0)
	f := newFakeCA(clk, time.Hour, "echo")
	l := newLoop(t, f, clk, 20)
	first := f.current("echo")
	at := rotation.Policy{}.RenewAt(first.NotBefore, first.NotAfter, first.Serial)

	wait := l.Step(context.Background())
	if len(f.renewed) != 0 {
		t.Fatal("renewed before its time")
	}
	if want := min(at.Sub(t0), 30*time.Second); wait != want {
		t.Fatalf("wait = %s, want %s", wait, want)
	}
	clk.Set(at.Add(-time.Second))
	l.Step(context.Background())
	if len(f.renewed) != 0 {
		t.Fatal("renewed a second early")
	}
	clk.Set(at)
	l.Step(context.Background())
	if len(f.renewed) != 1 || f.current("echo").Serial == first.Serial {
		t.Fatalf("not renewed at its renewal point: %v", f.renewed)
	}
	if s := l.Stats(); s.Renewed != 1 || s.Failed != 0 {
		t.Fatalf("stats = %+v", s)
	}
}

func TestRestartRenewsOverdueInBursts(t *testing.T) {
	clk := clock.NewFake(t0)
	var names []string
	for i := 0; i < 12; i++ {
		names = append(names, fmt.Sprintf("svc-%02d", i))
	}
	f := newFakeCA(clk, time.Hour, names...)
	// The server was down past every renewal point.
	clk.Add(40 * time.Minute)
	l := newLoop(t, f, clk, 5)
	ctx := context.Background()
	for round, want := range []int{5, 10, 12, 12} {
		wait := l.Step(ctx)
		if len(f.renewed) != want {
			t.Fatalf("round %d: %d renewed, want %d", round, len(f.renewed), want)
		}
		if want < 12 && wait != time.Second {
			t.Fatalf("round %d: next round in %s, want the 1s spread", round, wait)
		}
		clk.Add(wait)
	}
}

func TestFailedRenewalRetriesWithBackoffAndAlarms(t *testing.T) {
	clk := clock.NewFake(t0)
	f := newFakeCA(clk, time.Hour, "echo")
	f.fail["echo"] = true
	l := newLoop(t, f, clk, 20)
	c := f.current("echo")
	clk.Set(rotation.Policy{}.RenewAt(c.NotBefore, c.NotAfter, c.Serial))
	ctx := context.Background()
	var attempts []time.Time
	for clk.Now().Before(c.NotAfter) {
		before := l.Stats().Failed
		wait := l.Step(ctx)
		if l.Stats().Failed > before {
			attempts = append(attempts, clk.Now())
		}
		clk.Add(wait)
	}
	if len(attempts) < 8 {
		t.Fatalf("only %d attempts before expiry", len(attempts))
	}
	// Gaps grow: 1s, 2s, 4s ...
	for i := 1; i < 4; i++ {
		if gap := attempts[i].Sub(attempts[i-1]); gap < time.Second<<(i-1) {
			t.Fatalf("gap %d is %s, want at least %s", i, gap, time.Second<<(i-1))
		}
	}
	if s := l.Stats(); s.Alarms == 0 || s.Retrying != 1 {
		t.Fatalf("stats = %+v: no alarm before expiry", s)
	}
	// Once the store is back, the next attempt succeeds and clears the retry.
	f.mu.Lock()
	f.fail["echo"] = false
	f.mu.Unlock()
	clk.Add(time.Minute)
	l.Step(ctx)
	if s := l.Stats(); s.Renewed != 1 || s.Retrying != 0 {
		t.Fatalf("after recovery: %+v", s)
	}
}

func TestRunOnFakeClock(t *testing.T) {
	clk := clock.NewFake(t0)
	f := newFakeCA(clk, 10*time.Minute, "a", "b")
	l := newLoop(t, f, clk, 20)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Run(ctx) }()
	// Three rotations of each certificate. The clock moves only while the
	// loop is parked on it, so each round has finished when it is checked.
	wait, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	for {
		if err := clk.WaitForWaiters(wait, 1); err != nil {
			t.Fatalf("renewed %d, want 6: %v", l.Stats().Renewed, err)
		}
		if l.Stats().Renewed >= 6 {
			break
		}
		for _, n := range []string{"a", "b"} {
			if c := f.current(n); !clk.Now().Before(c.NotAfter) {
				t.Fatalf("%s expired at %s without renewal", n, c.NotAfter)
			}
		}
		clk.Add(10 * time.Second)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
