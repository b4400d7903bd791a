package clock_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

func TestFakeAfterFiresOnlyWhenDue(t *testing.T) {
	start := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c := clock.NewFake(start)
	ch := c.After(time.Minute)
	c.Add(59 * time.Second)
	select {
	case <-ch:
		t.Fatal("timer fired 1s early")
	default:
	}
	c.Add(time.Second)
	select {
	case got := <-ch:
		if want := start.Add(time.Minute); !got.Equal(want) {
			t.Fatalf("fired at %v, want %v", got, want)
		}
	default:
		t.Fatal("timer did not fire when due")
	}
	if got := c.Now(); !got.Equal(start.Add(time.Minute)) {
		t.Fatalf("Now() = %v", got)
	}
}

func TestFakeWaitForWaitersSeesAParkedGoroutine(t *testing.T) {
	c := clock.NewFake(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	fired := make(chan time.Time)
	go func() { fired <- <-c.After(time.Hour) }()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitForWaiters(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if got := c.Waiters(); got != 1 {
		t.Fatalf("Waiters() = %d, want 1", got)
	}
	c.Add(time.Hour)
	<-fired
	if got := c.Waiters(); got != 0 {
		t.Fatalf("Waiters() after firing = %d, want 0", got)
	}
}

func TestFakeWaitForWaitersGivesUpWithCtx(t *testing.T) {
	c := clock.NewFake(time.Now())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := c.WaitForWaiters(ctx, 1)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "0 of 1 timers pending") {
		t.Fatalf("err = %q does not say how many timers were pending", err)
	}
}

func TestFakeWaitForAfterCallsCountsImmediateTimers(t *testing.T) {
	c := clock.NewFake(time.Now())
	done := make(chan struct{})
	go func() {
		for range 3 {
			<-c.After(0) // fires at once, but is still a call
		}
		close(done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := c.WaitForAfterCalls(ctx, 3); err != nil {
		t.Fatal(err)
	}
	<-done
	if got := c.AfterCalls(); got != 3 {
		t.Fatalf("AfterCalls() = %d, want 3", got)
	}
}
