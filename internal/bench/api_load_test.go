package bench

import (
	"context"
	"errors"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

func TestPercentile(t *testing.T) {
	ms := func(v ...int) []time.Duration {
		out := make([]time.Duration, len(v))
		for i, x := range v {
			out[i] = time.Duration(x) * time.Millisecond
		}
		return out
	}
	hundred := make([]int, 100)
	for i := range hundred {
		hundred[i] = i + 1
	}
	tests := []struct {
		name   string
		sorted []time.Duration
		p      int
		want   time.Duration
	}{
		{name: "empty", sorted: nil, p: 50, want: 0},
		{name: "one sample is every percentile", sorted: ms(7), p: 99, want: 7 * time.Millisecond},
		{name: "median of four is the second", sorted: ms(1, 2, 3, 4), p: 50, want: 2 * time.Millisecond},
		{name: "p99 of 100 is the 99th", sorted: ms(hundred...), p: 99, want: 99 * time.Millisecond},
		{name: "p99 of 20 is the largest", sorted: ms(hundred[:20]...), p: 99, want: 20 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := percentile(tt.sorted, tt.p); got != tt.want {
				t.Fatalf("percentile(%d) = %s, want %s", tt.p, got, tt.want)
			}
		})
	}
}

func TestRunLoad(t *testing.T) {
	ctx := context.Background()
	t.Run("count: every index once, on at most Callers goroutines", func(t *testing.T) {
		var (
			mu             sync.Mutex
			seen           = map[int]bool{}
			inFlight, peak int
			allIn          = make(chan struct{}) // closed when 4 calls are in flight at once
		)
		res, err := RunLoad(ctx, Load{Callers: 4, Count: 50}, func(ctx context.Context, i int) error {
			mu.Lock()
			seen[i] = true
			inFlight++
			if inFlight > peak {
				peak = inFlight
				if peak == 4 {
					close(allIn)
				}
			}
			mu.Unlock()
			defer func() {
				mu.Lock()
				inFlight--
				mu.Unlock()
			}()
			// The first calls wait for each other: RunLoad must run Callers
			// of them at once for any to finish.
			select {
			case <-allIn:
				return nil
			case <-time.After(10 * time.Second):
				return errors.New("4 callers never ran at once")
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		if res.Requests != 50 || len(seen) != 50 || !seen[0] || !seen[49] {
			t.Fatalf("%d requests, %d distinct indexes", res.Requests, len(seen))
		}
		if peak != 4 {
			t.Fatalf("%d requests in flight at once, want 4 (Callers)", peak)
		}
		// The first 4 of 50 calls waited for each other: p99 saw them.
		if res.P99 <= 0 || res.P99 < res.P50 || res.Rate() <= 0 {
			t.Fatalf("p50 %s, p99 %s, rate %.0f/s", res.P50, res.P99, res.Rate())
		}
	})
	t.Run("duration: stops after For", func(t *testing.T) {
		res, err := RunLoad(ctx, Load{Callers: 2, For: 50 * time.Millisecond}, func(context.Context, int) error { return nil })
		if err != nil {
			t.Fatal(err)
		}
		if res.Elapsed < 50*time.Millisecond || res.Elapsed > 5*time.Second || res.Requests == 0 {
			t.Fatalf("%d requests in %s", res.Requests, res.Elapsed)
		}
	})
	t.Run("a failed request fails the load", func(t *testing.T) {
		errBoom := errors.New("no certificate in the answer")
		_, err := RunLoad(ctx, Load{Callers: 3, Count: 100}, func(_ context.Context, i int) error {
			if i == 10 {
				return errBoom
			}
			return nil
		})
		if !errors.Is(err, errBoom) {
			t.Fatalf("err = %v, want %v", err, errBoom)
		}
	})
	t.Run("no callers is refused", func(t *testing.T) {
		if _, err := RunLoad(ctx, Load{Count: 1}, func(context.Context, int) error { return nil }); err == nil {
			t.Fatal("a load without callers ran")
		}
	})
}

func TestCombineLoads(t *testing.T) {
	a := LoadResult{Requests: 2, Elapsed: time.Second, sorted: []time.Duration{1, 3}}
	b := LoadResult{Requests: 2, Elapsed: 3 * time.Second, sorted: []time.Duration{2, 100}}
	got := CombineLoads(a, b)
	if got.Requests != 4 || got.Elapsed != 4*time.Second || got.Rate() != 1 {
		t.Fatalf("%d requests in %s: %.2f/s, want 4 in 4s", got.Requests, got.Elapsed, got.Rate())
	}
	if got.P50 != 2 || got.P99 != 100 {
		t.Fatalf("p50 %d, p99 %d; want 2 and 100 over the pooled samples", got.P50, got.P99)
	}
}

func TestCPUOf(t *testing.T) {
	for start := time.Now(); time.Since(start) < 100*time.Millisecond; {
	}
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	got, err := cpuOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	want := time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	if d := got - want; d < -30*time.Millisecond || d > 30*time.Millisecond || got <= 0 {
		t.Fatalf("cpuOf says %s, getrusage %s", got, want)
	}
}

func TestCPUMeter(t *testing.T) {
	self := os.Getpid()
	all, err := newCPUMeter()
	if err != nil {
		t.Fatal(err)
	}
	others, err := newCPUMeter(self)
	if err != nil {
		t.Fatal(err)
	}
	before, err := cpuOf(self)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	for time.Since(start) < 200*time.Millisecond {
	}
	after, err := cpuOf(self)
	if err != nil {
		t.Fatal(err)
	}
	cores := runtime.NumCPU()
	a, err := all.Others(cores)
	if err != nil {
		t.Fatal(err)
	}
	o, err := others.Others(cores)
	if err != nil {
		t.Fatal(err)
	}
	// Both meters saw the same machine; one left this process out, so the
	// difference is this process's share, within a few clock ticks.
	own := float64(after-before) / float64(time.Since(start)*time.Duration(cores))
	if diff := a - o - own; diff < -0.1 || diff > 0.1 || own <= 0 {
		t.Fatalf("all %.3f, others %.3f, this process %.3f of %d cores", a, o, own, cores)
	}
}
