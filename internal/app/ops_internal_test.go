package app

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/xds"
)

// TestReadinessFollowsStore: closing the store makes meshca not ready.
func TestReadinessFollowsStore(t *testing.T) {
	ctx := context.Background()
	st, td, clk, auth, reg := openParts(t)
	var err error
	refusals, err := denials.New(denials.Config{Store: st, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := xds.New(xds.Config{TrustDomain: td, Auth: reg, Joiner: joiner{reg: reg}, Audit: refusals,
		Roots: auth.CA().Roots, ServerCert: nil})
	if err == nil {
		t.Fatal("xds.New accepted a missing ServerCert")
	}
	sc, _ := auth.ServerCert(nil, time.Hour)
	srv, err = xds.New(xds.Config{TrustDomain: td, Auth: reg, Joiner: joiner{reg: reg}, Audit: refusals,
		Roots: auth.CA().Roots, ServerCert: sc.Get})
	if err != nil {
		t.Fatal(err)
	}
	o := &opsState{reg: reg, auth: auth, xds: srv, store: st, now: clk.Now}
	if err := o.ready(ctx); err == nil || !strings.Contains(err.Error(), "xDS") {
		t.Fatalf("ready before xDS serves: %v", err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- srv.Run(runCtx, ln) }()
	defer func() { stop(); <-done }()
	// A TLS handshake is answered only once Run serves: it is the event
	// that Run has started. Its outcome does not matter (no client
	// certificate is sent and the server's is not checked).
	c, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(),
		&tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatalf("xDS did not answer a handshake within 5s: %v", err)
	}
	if c != nil {
		c.Close()
	}
	if err := o.ready(ctx); err != nil {
		t.Fatalf("not ready while serving: %v", err)
	}
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	if err := o.ready(ctx); err == nil || !strings.Contains(err.Error(), "store") {
		t.Fatalf("ready with a closed store: %v", err)
	}
}

// openParts opens a real store with the authority and the registry on it,
// wired as Start wires them, on a fake clock.
func openParts(t *testing.T) (*store.Store, spiffeid.TrustDomain, *clock.Fake, *authority.Authority, *registry.Registry) {
	t.Helper()
	ctx := context.Background()
	st := testkit.OpenStore(t, filepath.Join(t.TempDir(), "data"), store.Config{})
	td, _ := identity.TrustDomain("mesh.local")
	clk := clock.NewFake(time.Now())
	auth, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(ctx, registry.Config{Store: st, TrustDomain: td, Issuer: auth, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	return st, td, clk, auth, reg
}
