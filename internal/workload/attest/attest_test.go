package attest_test

import (
	"bytes"
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/workload/attest"
)

func TestMatch(t *testing.T) {
	c := peercred.Caller{UID: 1000, GID: 100, PID: 42, Path: "/usr/bin/echo"}
	exited := peercred.Caller{UID: 1000, GID: 100, PID: 43} // path unreadable
	tests := []struct {
		name      string
		caller    peercred.Caller
		selectors []string
		want      bool
	}{
		{name: "no selectors", caller: c, want: true},
		{name: "uid", caller: c, selectors: []string{"uid:1000"}, want: true},
		{name: "other uid", caller: c, selectors: []string{"uid:1001"}, want: false},
		{name: "gid", caller: c, selectors: []string{"gid:100"}, want: true},
		{name: "path", caller: c, selectors: []string{"path:/usr/bin/echo"}, want: true},
		{name: "other path", caller: c, selectors: []string{"path:/usr/bin/cat"}, want: false},
		{name: "all match", caller: c, selectors: []string{"uid:1000", "gid:100", "path:/usr/bin/echo"}, want: true},
		{name: "one of three fails", caller: c, selectors: []string{"uid:1000", "gid:101", "path:/usr/bin/echo"}, want: false},
		{name: "unreadable path never matches", caller: exited, selectors: []string{"path:/usr/bin/echo"}, want: false},
		{name: "unreadable path, uid still matches", caller: exited, selectors: []string{"uid:1000"}, want: true},
		{name: "malformed selector matches nothing", caller: c, selectors: []string{"uid:1000", "uid:abc"}, want: false},
		{name: "leading zeros", caller: c, selectors: []string{"uid:01000"}, want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := attest.Match(tt.caller, tt.selectors); got != tt.want {
				t.Fatalf("Match(%v, %v) = %t, want %t", tt.caller, tt.selectors, got, tt.want)
			}
		})
	}
}

func TestGateCheck(t *testing.T) {
	c := peercred.Caller{UID: 1000, GID: 100, PID: 42, Path: "/usr/bin/echo"}
	var denied []string
	g := attest.NewGate(attest.GateConfig{Denied: func(got peercred.Caller, reason string) {
		if got != c {
			t.Errorf("denied caller = %v, want %v", got, c)
		}
		denied = append(denied, reason)
	}})
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: c})
	if _, err := g.Check(ctx, "web", []string{"uid:1000"}); err != nil {
		t.Fatalf("matching caller refused: %v", err)
	}
	if _, err := g.Check(ctx, "web", []string{"uid:0"}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("other uid: err = %v, want PermissionDenied", err)
	}
	if len(denied) != 1 {
		t.Fatalf("Denied hook called %d times, want 1", len(denied))
	}
	if _, err := g.Check(context.Background(), "web", nil); status.Code(err) != codes.Unauthenticated {
		t.Fatalf("no peer credentials: err = %v, want Unauthenticated", err)
	}
}

// TestGateLogIsRateLimited: a process refused in a loop reaches the audit
// hook every time but the log only LogBurst times per minute.
func TestGateLogIsRateLimited(t *testing.T) {
	var buf bytes.Buffer
	hooks := 0
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	g := attest.NewGate(attest.GateConfig{
		Logger:   slog.New(slog.NewTextHandler(&buf, nil)),
		LogBurst: 3,
		Denied:   func(peercred.Caller, string) { hooks++ },
		Now:      func() time.Time { return now },
	})
	ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: peercred.Caller{UID: 7}})
	const refusals = 1000
	for range refusals {
		if _, err := g.Check(ctx, "web", []string{"uid:8"}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("err = %v, want PermissionDenied", err)
		}
	}
	lines := strings.Count(buf.String(), "\n")
	if hooks != refusals || lines != 3 {
		t.Fatalf("%d refusals: hook called %d times (want every time), %d log records (want 3)", refusals, hooks, lines)
	}
	now = now.Add(time.Minute + time.Second)
	_, _ = g.Check(ctx, "web", []string{"uid:8"})
	if got := buf.String(); !strings.Contains(got[strings.LastIndex(got[:len(got)-1], "\n")+1:], "suppressed=997") {
		t.Fatalf("the first record of the next minute does not count the 997 left out:\n%s", got)
	}
	t.Logf("%d refusals in a minute: %d log records, the next one says suppressed=997", refusals, lines)
}
