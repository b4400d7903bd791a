// Package clock is the one way meshca reads time. Every component takes a
// Clock in its Config so that tests can drive validity windows and renewal
// decisions exactly, without sleeping.
package clock

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// Clock tells the time and makes timers. Implementations are safe for
// concurrent use.
type Clock interface {
	Now() time.Time
	// After returns a channel that receives the time once d has passed on
	// this clock.
	After(d time.Duration) <-chan time.Time
}

// Real is the wall clock.
type Real struct{}

var _ Clock = Real{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// After is time.After.
func (Real) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Fake is a clock that moves only when told to. The zero value is not
// usable: create one with NewFake.
//
// Tests advance a Fake exactly when the code under test is parked on it:
// WaitForWaiters blocks until enough goroutines wait in After, so a test
// never sleeps to let a goroutine reach its timer. A timer whose channel
// nobody reads any more (its select took another case) still counts until
// it fires.
type Fake struct {
	mu      sync.Mutex
	now     time.Time
	waiters []waiter
	calls   uint64        // After calls since NewFake
	changed chan struct{} // closed and replaced whenever waiters or calls change
}

type waiter struct {
	at time.Time
	ch chan time.Time
}

var _ Clock = (*Fake)(nil)

// NewFake returns a Fake clock set to now.
func NewFake(now time.Time) *Fake { return &Fake{now: now, changed: make(chan struct{})} }

// Now returns the fake time.
func (f *Fake) Now() time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.now
}

// After fires once Add or Set has moved the clock d past the current time.
func (f *Fake) After(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	at := f.now.Add(d)
	f.calls++
	defer f.broadcast()
	if d <= 0 {
		ch <- f.now
		return ch
	}
	f.waiters = append(f.waiters, waiter{at: at, ch: ch})
	return ch
}

// broadcast wakes every WaitFor call; f.mu is held.
func (f *Fake) broadcast() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Waiters returns how many timers made by After have not fired yet.
func (f *Fake) Waiters() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.waiters)
}

// AfterCalls returns how many times After has been called.
func (f *Fake) AfterCalls() uint64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// WaitForWaiters blocks until at least n timers are pending, that is until
// the goroutines under test are parked on this clock, or until ctx is done.
func (f *Fake) WaitForWaiters(ctx context.Context, n int) error {
	return f.waitFor(ctx, func() bool { return len(f.waiters) >= n },
		func() string { return fmt.Sprintf("%d of %d timers pending", len(f.waiters), n) })
}

// WaitForAfterCalls blocks until After has been called at least n times in
// all, or until ctx is done. With AfterCalls it tells a test that a loop
// went round once more, even when its timer fired at once.
func (f *Fake) WaitForAfterCalls(ctx context.Context, n uint64) error {
	return f.waitFor(ctx, func() bool { return f.calls >= n },
		func() string { return fmt.Sprintf("After called %d of %d times", f.calls, n) })
}

func (f *Fake) waitFor(ctx context.Context, done func() bool, state func() string) error {
	for {
		f.mu.Lock()
		if done() {
			f.mu.Unlock()
			return nil
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			f.mu.Lock()
			defer f.mu.Unlock()
			return fmt.Errorf("fake clock: %s: %w", state(), ctx.Err())
		}
	}
}

// Add moves the clock forward by d and fires the timers that are due.
func (f *Fake) Add(d time.Duration) { f.Set(f.Now().Add(d)) }

// Set moves the clock to t and fires the timers that are due.
func (f *Fake) Set(t time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.now = t
	kept := f.waiters[:0]
	for _, w := range f.waiters {
		if !w.at.After(t) {
			w.ch <- t
			continue
		}
		kept = append(kept, w)
	}
	f.waiters = kept
	f.broadcast()
}
