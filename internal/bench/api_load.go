package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Load is a closed-loop load: Callers goroutines each send one request,
// wait for its answer and send the next, until Count requests have been
// sent or, when Count is 0, until For has passed.
type Load struct {
	Callers int
	Count   int
	For     time.Duration
}

// LoadResult is what a Load measured.
type LoadResult struct {
	Requests int
	// Elapsed runs from the first request sent to the last answer read.
	Elapsed  time.Duration
	P50, P99 time.Duration

	sorted []time.Duration // every request's latency
}

// CombineLoads pools the results of loads run one after another: their
// requests over their summed time, percentiles over every sample.
func CombineLoads(rs ...LoadResult) LoadResult {
	var out LoadResult
	for _, r := range rs {
		out.Requests += r.Requests
		out.Elapsed += r.Elapsed
		out.sorted = append(out.sorted, r.sorted...)
	}
	slices.Sort(out.sorted)
	out.P50, out.P99 = percentile(out.sorted, 50), percentile(out.sorted, 99)
	return out
}

// Rate is requests per second.
func (r LoadResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Requests) / r.Elapsed.Seconds()
}

// RunLoad runs l with op as the request: i numbers the request, unique in
// the run. A request op fails is not a sample: the first failure stops the
// load and is returned.
func RunLoad(ctx context.Context, l Load, op func(ctx context.Context, i int) error) (LoadResult, error) {
	if l.Callers <= 0 || (l.Count <= 0 && l.For <= 0) {
		return LoadResult{}, errors.New("bench: a load needs callers and a count or a duration")
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
		lat     = make([][]time.Duration, l.Callers)
	)
	start := time.Now()
	deadline := start.Add(l.For)
	for c := range l.Callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				if l.Count > 0 {
					if next.Load() >= int64(l.Count) {
						return
					}
				} else if !time.Now().Before(deadline) {
					return
				}
				i := int(next.Add(1)) - 1
				if l.Count > 0 && i >= l.Count {
					return
				}
				begin := time.Now()
				if err := op(ctx, i); err != nil {
					errOnce.Do(func() { first = fmt.Errorf("request %d: %w", i, err) })
					cancel()
					return
				}
				lat[c] = append(lat[c], time.Since(begin))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	if first != nil {
		return LoadResult{}, first
	}
	if err := ctx.Err(); err != nil {
		return LoadResult{}, err
	}
	all := slices.Concat(lat...)
	slices.Sort(all)
	return LoadResult{Requests: len(all), Elapsed: elapsed, P50: percentile(all, 50), P99: percentile(all, 99), sorted: all}, nil
}

// percentile returns the nearest-rank p-th percentile of sorted.
func percentile(sorted []time.Duration, p int) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	rank := (len(sorted)*p + 99) / 100 // ceil(n·p/100)
	return sorted[max(rank, 1)-1]
}

// loadClient is the HTTP client of a load: HTTP/1.1 over loopback, one
// kept-alive connection per caller, no proxy, no compression.
func loadClient(callers int) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			MaxIdleConns:        callers,
			MaxIdleConnsPerHost: callers,
			IdleConnTimeout:     time.Minute,
			DisableCompression:  true,
		},
		Timeout: time.Minute,
	}
}
