package registry

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
)

// The registry refuses out-of-range TTLs with authority's message, for
// identities and in its own Lifetimes, and issues with the Lifetimes it is
// given (the authority's own checks are in internal/authority).
func TestRegistryTakesLifetimes(t *testing.T) {
	ctx := context.Background()
	td, _ := identity.TrustDomain("mesh.local")
	st := openStore(t, dataDir(t))
	defer st.Close()
	clk := clock.NewFake(t0)

	bad := authority.Default()
	bad.Node = time.Minute
	if _, err := New(ctx, Config{Store: st, TrustDomain: td, Issuer: noIssuer{}, Clock: clk, Lifetimes: bad}); err == nil ||
		!strings.Contains(err.Error(), authority.LeafTTL.Check(time.Minute).Error()) {
		t.Fatalf("New with a 1m node lifetime: %v", err)
	}

	life := authority.Default()
	life.Leaf, life.JoinToken, life.Intermediate = 2*time.Hour, 10*time.Minute, 72*time.Hour
	r := newRegistryWith(t, Config{Store: st, Clock: clk, Lifetimes: life})
	for _, ttl := range []time.Duration{time.Minute, 4*time.Minute + 59*time.Second, 720*time.Hour + time.Second, -time.Hour} {
		want := authority.LeafTTL.Check(ttl).Error()
		_, err := r.AddIdentity(ctx, AddIdentity{Name: "x", TTL: ttl}, "test")
		if !errors.Is(err, ca.ErrTTL) || !strings.HasSuffix(err.Error(), want) {
			t.Errorf("AddIdentity ttl %s: %v, want ca.ErrTTL ending %q", ttl, err, want)
		}
	}
	st1, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	nb, na := life.Window(t0, life.Leaf, caOf(r).Issuer().NotAfter)
	if !st1.Cert.NotBefore.Equal(nb) || !st1.Cert.NotAfter.Equal(na) {
		t.Fatalf("identity without a TTL valid %s..%s, want %s..%s", st1.Cert.NotBefore, st1.Cert.NotAfter, nb, na)
	}
	_, tok, err := r.AddNode(ctx, AddNode{Name: "n1"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if want := t0.Add(life.JoinToken); !tok.Expires.Equal(want) {
		t.Fatalf("join token expires %s, want %s", tok.Expires, want)
	}
}

// noIssuer issues nothing: for a registry that must not get as far.
type noIssuer struct{}

func (noIssuer) Issue(context.Context, ca.Request) (*ca.Issued, string, error) {
	return nil, "", errors.New("no issuer")
}
func (noIssuer) BundlePEM() []byte                 { return nil }
func (noIssuer) IssuersPEM(context.Context) []byte { return nil }
func (noIssuer) Refresh(context.Context) error     { return nil }
func (noIssuer) IssuingSerials() []string          { return nil }
