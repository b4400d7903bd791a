package xds

import (
	"crypto/x509"
	"sync/atomic"
	"testing"
)

// TestVerifyNodeLoadedRoots: with LoadedRoots set, a chain that verifies
// against them costs no call of Roots (the store read); one that does not
// (a CA the feed has not brought yet) is verified against Roots, and one
// that verifies against neither is refused before the Authenticator.
func TestVerifyNodeLoadedRoots(t *testing.T) {
	f := newFixture(t)
	stale := newTestCA(t, "an issuing CA retired since", f.clk.Now())
	var rootCalls atomic.Int64
	var roots, loaded []*x509.Certificate
	f.s.cfg.Roots = func() []*x509.Certificate { rootCalls.Add(1); return roots }
	f.s.cfg.LoadedRoots = func() []*x509.Certificate { return loaded }
	leaf := f.nodeCert("n1")

	tests := []struct {
		name          string
		roots, loaded []*x509.Certificate
		wantOK        bool
		wantRootCalls int64
	}{
		{"the feed's CAs verify it", []*x509.Certificate{f.ca.cert}, []*x509.Certificate{f.ca.cert}, true, 0},
		{"the feed lags: the store's CAs verify it", []*x509.Certificate{f.ca.cert}, []*x509.Certificate{stale.cert}, true, 1},
		{"the feed has nothing yet", []*x509.Certificate{f.ca.cert}, nil, true, 1},
		{"neither verifies it", []*x509.Certificate{stale.cert}, []*x509.Certificate{stale.cert}, false, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			roots, loaded = tt.roots, tt.loaded
			rootCalls.Store(0)
			authCalls := f.auth.calledTimes()
			node, _, err := f.s.verifyNode([]*x509.Certificate{leaf})
			if (err == nil) != tt.wantOK || tt.wantOK && node != "n1" {
				t.Fatalf("verifyNode = %q, %v; want accepted %v", node, err, tt.wantOK)
			}
			if got := rootCalls.Load(); got != tt.wantRootCalls {
				t.Errorf("Roots called %d times, want %d", got, tt.wantRootCalls)
			}
			if !tt.wantOK && f.auth.calledTimes() != authCalls {
				t.Error("a chain that verifies against no issuing CA reached the Authenticator")
			}
		})
	}
}
