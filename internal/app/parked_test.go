package app_test

import (
	"context"
	"fmt"
	"net/http"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// appLoops is how many of meshca's loops wait on its clock between rounds:
// the renewal loop, the CRL refresh, the refusal summaries, the CA
// rotation loop and the store's pruning.
const appLoops = 5

// settle blocks until every loop of the app is parked on the fake clock,
// that is until each has done what the current fake time makes due.
func settle(t *testing.T, clk *clock.Fake) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
	defer cancel()
	if err := clk.WaitForWaiters(ctx, appLoops); err != nil {
		t.Fatalf("meshca's loops did not park on the clock: %v", err)
	}
}

// advance moves the fake clock by d while every loop is parked, and returns
// once they are parked again: the renewals due by the new time are made
// (their pushes to nodes may still be on the way).
func advance(t *testing.T, clk *clock.Fake, d time.Duration) {
	t.Helper()
	settle(t, clk)
	clk.Add(d)
	settle(t, clk)
}

// serials returns the current certificate serial of every identity.
func (m *mesh) serials() map[string]string {
	var ids []api.Identity
	m.admin("GET", api.PathIdentities, nil, &ids, http.StatusOK)
	out := map[string]string{}
	for _, id := range ids {
		if id.Cert != nil {
			out[id.Name] = id.Cert.Serial
		}
	}
	return out
}

// await applies the proxy's updates as they arrive until done reports
// true, and fails the test if that takes longer than recvTimeout.
func (h *holder) await(t *testing.T, what string, done func() bool) {
	t.Helper()
	h.awaitWith(t, what, func(u map[string]*tlsv3.Secret) {
		for k, v := range u {
			h.secrets[k] = v
		}
	}, done)
}

// awaitWith is await with apply taking each update.
func (h *holder) awaitWith(t *testing.T, what string, apply func(map[string]*tlsv3.Secret), done func() bool) {
	t.Helper()
	timeout := time.After(recvTimeout)
	for {
		// Updates already received first: done may hold only after them.
		select {
		case u := <-h.p.updates:
			apply(u)
			continue
		default:
		}
		if done() {
			return
		}
		select {
		case u := <-h.p.updates:
			apply(u)
		case err := <-h.p.done:
			t.Fatalf("%s: stream ended: %v", what, err)
		case <-timeout:
			t.Fatalf("%s: not within %s", what, recvTimeout)
		}
	}
}

// holds reports whether the proxy holds the certificate with serial for id.
func (h *holder) holds(t *testing.T, id, serial string) bool {
	s := h.secrets[secretName(id)]
	return s != nil && fmt.Sprintf("%x", tlsCert(t, s).Leaf.SerialNumber) == serial
}

// pollUntil checks cond every tick until it holds (true) or timeout has
// passed (false). Only for effects of the real network that announce no
// event a test could wait for.
func pollUntil(timeout, tick time.Duration, cond func() bool) bool {
	deadline := time.After(timeout)
	t := time.NewTicker(tick)
	defer t.Stop()
	for !cond() {
		select {
		case <-deadline:
			return cond()
		case <-t.C:
		}
	}
	return true
}
