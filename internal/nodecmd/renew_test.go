package nodecmd

import (
	"context"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/rotation"
)

func writeLeaf(t *testing.T, dir string, serial int64, nb, na time.Time) *x509.Certificate {
	t.Helper()
	key := testkit.Key(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: nb, NotAfter: na}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, bootstrap.CertFile), testkit.CertPEM(der), 0o600); err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c
}

func TestWatchRenewSchedule(t *testing.T) {
	t0 := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	clk := clock.NewFake(t0)
	dir := t.TempDir()
	first := writeLeaf(t, dir, 1, t0, t0.Add(time.Hour))
	firstAt := rotation.Policy{}.RenewAt(first.NotBefore, first.NotAfter, fmt.Sprintf("%x", first.SerialNumber))

	var (
		mu    sync.Mutex
		calls []time.Time
	)
	renew := func(ctx context.Context, dir string, _ io.Writer) (*x509.Certificate, error) {
		mu.Lock()
		defer mu.Unlock()
		calls = append(calls, clk.Now())
		if len(calls) == 1 {
			return nil, errors.New("meshca unreachable")
		}
		return writeLeaf(t, dir, int64(len(calls)), clk.Now(), clk.Now().Add(time.Hour)), nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- watchRenew(ctx, clk, dir, io.Discard, io.Discard, renew) }()

	// The clock moves a second at a time, only while watchRenew is parked
	// on it: every renewal it is due for has been made when calls is read.
	wait, stop := context.WithTimeout(ctx, 5*time.Second)
	defer stop()
	waitCalls := func(n int) {
		t.Helper()
		for {
			if err := clk.WaitForWaiters(wait, 1); err != nil {
				t.Fatalf("want %d renewals: %v", n, err)
			}
			mu.Lock()
			got := len(calls)
			mu.Unlock()
			if got >= n {
				return
			}
			clk.Add(time.Second)
		}
	}
	waitCalls(1)
	waitCalls(2)
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if calls[0].Before(firstAt) || calls[0].After(firstAt.Add(2*time.Second)) {
		t.Fatalf("first renewal at %s, want its renewal point %s", calls[0], firstAt)
	}
	if gap := calls[1].Sub(calls[0]); gap < 5*time.Second || gap > 7*time.Second {
		t.Fatalf("retry after %s, want the 5s backoff", gap)
	}
}
