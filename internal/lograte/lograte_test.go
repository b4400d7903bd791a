package lograte_test

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/lograte"
)

func TestHandlerLimitsAndReportsSuppressed(t *testing.T) {
	var b bytes.Buffer
	clk := clock.NewFake(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	log := slog.New(lograte.New(slog.NewTextHandler(&b, nil), lograte.Config{Burst: 3, Interval: time.Minute, Now: clk.Now}))
	child := log.With("port", "admin") // shares the budget
	for i := 0; i < 1000; i++ {
		child.Warn("handshake error", "i", i)
	}
	if n := strings.Count(b.String(), "\n"); n != 3 {
		t.Fatalf("%d lines for 1000 records, want 3:\n%s", n, b.String())
	}
	clk.Add(time.Minute)
	log.Warn("handshake error", "i", 1000)
	lines := strings.Split(strings.TrimSpace(b.String()), "\n")
	if len(lines) != 4 || !strings.Contains(lines[3], "suppressed=997") {
		t.Fatalf("after the interval: %q", lines)
	}
}
