package denials

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

// counted is an OnDenial hook that counts by action/outcome/reason.
type counted struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *counted) observe(action, outcome, reason string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[action+"/"+outcome+"/"+reason]++
}

func (c *counted) get(k string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[k]
}

func newRecorder(t *testing.T, st *store.Store, clk clock.Clock, c *counted) *Recorder {
	t.Helper()
	cfg := Config{Store: st, Clock: clk}
	if c != nil {
		cfg.OnDenial = c.observe
	}
	r, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// openStore opens a store in a temporary directory. (testkit sits above
// this package: it cannot be used here.)
func openStore(t *testing.T) *store.Store { return openStoreWith(t, store.Config{}) }

func openStoreWith(t *testing.T, cfg store.Config) *store.Store {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.LoadOrCreate(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	cfg.Dir, cfg.Sealer = dir, sealer
	st, err := store.Open(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// denied is every audit record that is not a success.
func denied(t *testing.T, st *store.Store) []store.Event {
	t.Helper()
	var evs []store.Event
	if err := st.View(context.Background(), func(tx *store.Tx) (err error) { evs, err = tx.Events(0, 0); return err }); err != nil {
		t.Fatal(err)
	}
	var out []store.Event
	for _, e := range evs {
		if e.Outcome != store.OutcomeOK {
			out = append(out, e)
		}
	}
	return out
}

// TestRefusalBurstIsOneRecordPlusSummary: a burst of one source and reason
// is recorded once at once and once in the interval's summary, which
// carries the count; the hook sees every refusal.
func TestRefusalBurstIsOneRecordPlusSummary(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(t0)
	c := &counted{}
	st := openStore(t)
	r := newRecorder(t, st, clk, c)
	for i := 0; i < 1000; i++ {
		r.RecordDenial(ctx, "node.auth", "", "spiffe://mesh.local/web is not a node identity: permission denied")
		clk.Add(time.Millisecond)
	}
	if got := denied(t, st); len(got) != 1 {
		t.Fatalf("%d records before the summary, want 1 (the first refusal at once)", len(got))
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := denied(t, st)
	if len(got) != 2 {
		t.Fatalf("%d records after the summary, want 2", len(got))
	}
	if !strings.HasPrefix(got[1].Detail, "999 more refusals between 2026-11-25T12:00:00Z and 2026-11-25T12:00:00Z") {
		t.Fatalf("summary detail = %q", got[1].Detail)
	}
	if n := c.get("node.auth/denied/not_allowed"); n != 1000 {
		t.Fatalf("hook counted %d, want 1000", n)
	}
	t.Logf("1000 refusals of one source and reason: %d audit records, metric %d", len(got), c.get("node.auth/denied/not_allowed"))

	// Still refused in the next interval: only a summary, no new record at once.
	r.RecordDenial(ctx, "node.auth", "", "spiffe://mesh.local/web is not a node identity: permission denied")
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := denied(t, st); len(got) != 3 || !strings.HasPrefix(got[2].Detail, "1 more refusal ") {
		t.Fatalf("records = %d, last %q; want a third, a summary of 1", len(got), got[len(got)-1].Detail)
	}
	// Quiet for an interval: forgotten, so the next refusal is news again.
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	r.RecordDenial(ctx, "node.auth", "", "spiffe://mesh.local/web is not a node identity: permission denied")
	if got := denied(t, st); len(got) != 4 || got[3].Detail != "spiffe://mesh.local/web is not a node identity: permission denied" {
		t.Fatalf("records = %d, last %q; want the refusal recorded at once", len(got), got[len(got)-1].Detail)
	}
}

// TestRefusalKeysAreBounded: distinct sources beyond maxKeys fold into one
// "other" record per action.
func TestRefusalKeysAreBounded(t *testing.T) {
	ctx := context.Background()
	c := &counted{}
	st := openStore(t)
	r := newRecorder(t, st, clock.NewFake(t0), c)
	const sources = 1000
	for i := 0; i < sources; i++ {
		r.RecordDenial(ctx, "node.join", fmt.Sprintf("n%d", i), "join token refused: node is not registered")
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	got := denied(t, st)
	if len(got) != maxKeys+1 {
		t.Fatalf("%d records for %d sources, want %d", len(got), sources, maxKeys+1)
	}
	last := got[len(got)-1]
	if last.Actor != "other" || !strings.HasPrefix(last.Detail, fmt.Sprintf("%d refusals between", sources-maxKeys)) {
		t.Fatalf("overflow record = %+v", last)
	}
	if n := c.get("node.join/denied/unknown"); n != sources {
		t.Fatalf("hook counted %d, want %d", n, sources)
	}
	if kept := r.tracked(); kept > maxKeys {
		t.Fatalf("%d keys held, cap %d", kept, maxKeys)
	}
	t.Logf("%d refusals from %d sources: %d audit records in one interval", sources, sources, len(got))
}

// TestRunFlushesOnTheClockAndAtShutdown uses the fake clock: the summary is
// written when the interval ends, and what is left when ctx ends.
func TestRunFlushesOnTheClockAndAtShutdown(t *testing.T) {
	ctx := context.Background()
	clk := clock.NewFake(t0)
	st := openStore(t)
	r := newRecorder(t, st, clk, nil)
	for i := 0; i < 10; i++ {
		r.RecordDenial(ctx, "xds.auth", "", "client certificate does not verify")
	}
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := clk.WaitForAfterCalls(wctx, 1); err != nil {
		t.Fatal(err)
	}
	clk.Add(DefaultInterval)
	if err := clk.WaitForAfterCalls(wctx, 2); err != nil { // flushed and parked again
		t.Fatal(err)
	}
	if got := denied(t, st); len(got) != 2 || !strings.HasPrefix(got[1].Detail, "9 more refusals") {
		t.Fatalf("after one interval: %d records", len(got))
	}
	for i := 0; i < 5; i++ {
		r.RecordDenial(ctx, "xds.auth", "", "client certificate does not verify")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if got := denied(t, st); len(got) != 3 || !strings.HasPrefix(got[2].Detail, "5 more refusals") {
		t.Fatalf("after shutdown: %d records", len(got))
	}
}

// TestRefusedInputIsClipped: a long refused name is cut on a UTF-8
// boundary in the record.
func TestRefusedInputIsClipped(t *testing.T) {
	ctx := context.Background()
	st := openStore(t)
	r := newRecorder(t, st, clock.NewFake(t0), nil)
	name := "\x1b[2J" + strings.Repeat("é", 150) // 304 bytes
	r.RecordDenial(ctx, "node.join", name, "join token refused: node "+fmt.Sprintf("%q", name)+" is not registered"+strings.Repeat(" x", 300))
	got := denied(t, st)
	if len(got) != 1 {
		t.Fatalf("%d records", len(got))
	}
	e := got[0]
	if len(e.Node) > nameWidth+3 || !utf8.ValidString(e.Node) || !strings.HasSuffix(e.Node, "...") {
		t.Fatalf("node %q (%d bytes): want at most %d bytes of valid UTF-8 ending in ...", e.Node, len(e.Node), nameWidth+3)
	}
	if len(e.Detail) > detailWidth+3 || !utf8.ValidString(e.Detail) {
		t.Fatalf("detail is %d bytes", len(e.Detail))
	}
	t.Logf("refused name of %d bytes recorded as %d bytes, detail as %d", len(name), len(e.Node), len(e.Detail))
}

func TestReason(t *testing.T) {
	tests := []struct {
		name, outcome, detail, want string
	}{
		{"workload cert", "", "spiffe://mesh.local/web is not a node identity: permission denied", ReasonNotAllowed},
		{"revoked node", "", `node "b" is revoked: permission denied`, ReasonRevoked},
		{"name cannot pick the reason", "", `join token refused: node "revoked" is not registered (meshca node add revoked)`, ReasonRevoked},
		{"unregistered", "", `join token refused: node "x" is not registered`, ReasonUnknown},
		{"bad token", "", `join token refused: the token for node "x" is not valid`, ReasonToken},
		{"untrusted", "", "client certificate does not verify: x509: certificate signed by unknown authority", ReasonUntrusted},
		{"rate limit", "", `node "b" renews too often: try again in 3s`, ReasonRateLimited},
		{"lint", store.OutcomeFailed, "ca: lint: e_foo", ReasonLint},
		{"failed", store.OutcomeFailed, "store closed", ReasonFailed},
		{"other", "", "csr_pem is not one PEM CERTIFICATE REQUEST block", ReasonInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := reasonOf(store.Event{Outcome: tt.outcome, Detail: tt.detail}); got != tt.want {
				t.Fatalf("reason = %s, want %s", got, tt.want)
			}
		})
	}
}

// TestRefusalNotWrittenIsInTheSummary: when the first record of a key
// cannot be written, the interval's summary counts it.
func TestRefusalNotWrittenIsInTheSummary(t *testing.T) {
	ctx := context.Background()
	var failing atomic.Bool
	st := openStoreWith(t, store.Config{Fault: func() error {
		if failing.Load() {
			return errors.New("injected fault")
		}
		return nil
	}})
	r := newRecorder(t, st, clock.NewFake(t0), nil)
	failing.Store(true)
	r.RecordDenial(ctx, "xds.auth", "", "client certificate does not verify")
	failing.Store(false)
	if got := denied(t, st); len(got) != 0 {
		t.Fatalf("%d records written during the fault", len(got))
	}
	if err := r.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if got := denied(t, st); len(got) != 1 || !strings.HasPrefix(got[0].Detail, "1 more refusal ") {
		t.Fatalf("after the interval: %+v", got)
	}
}
