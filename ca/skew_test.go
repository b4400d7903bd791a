package ca_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
)

// TestClockSkew: the CA's clock reads T; verifiers read T-10m, T-59s and
// T+10m. meshca backdates NotBefore by ca.DefaultBackdate (1 minute,
// truncated to the second), so a verifier up to 59s behind accepts a fresh
// certificate and one 10 minutes behind does not: that is the documented
// margin (DESIGN.md invariant 4), not a bug. A verifier ahead of the CA is
// fine as long as it is before NotAfter.
func TestClockSkew(t *testing.T) {
	clk := clock.NewFake(testNow)
	c, m := newCA(t, ca.ECDSAP256, clk)
	roots, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range c.Roots() {
		roots.AddCert(r)
	}
	for _, ic := range m.Chain {
		inter.AddCert(ic)
	}
	inter.AddCert(m.Issuer)
	id := spiffeid.RequireFromString("spiffe://mesh.local/echo")

	is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	T := clk.Now()
	if got, want := T.Sub(is.Cert.NotBefore), ca.DefaultBackdate; got < want || got >= want+time.Second {
		t.Errorf("NotBefore is T-%s, want T-%s (truncated to the second)", got, want)
	}
	for _, v := range []struct {
		skew time.Duration
		ok   bool
	}{
		{-10 * time.Minute, false}, // beyond the 1-minute backdate: refused
		{-59 * time.Second, true},  // within it
		{-time.Second, true},
		{0, true},
		{10 * time.Minute, true},
		{58 * time.Minute, true},
		{61 * time.Minute, false}, // past NotAfter (TTL 1h from T-1m)
	} {
		_, err := is.Cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: T.Add(v.skew),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
		if (err == nil) != v.ok {
			t.Errorf("verifier at T%+v: err=%v, want ok=%t", v.skew, err, v.ok)
		}
		t.Logf("verifier at T%+v: accepted=%t", v.skew, err == nil)
	}

	// Never issued already expired, whatever the TTL; NotAfter never past
	// the issuer's NotAfter.
	for _, ttl := range []time.Duration{ca.MinTTL, time.Hour, 24 * time.Hour, ca.MaxTTL} {
		is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: ttl})
		if err != nil {
			t.Fatalf("TTL %s: %v", ttl, err)
		}
		if !is.Cert.NotAfter.After(clk.Now()) {
			t.Errorf("TTL %s: NotAfter %s is not after T %s", ttl, is.Cert.NotAfter, clk.Now())
		}
		if is.Cert.NotAfter.After(m.Issuer.NotAfter) {
			t.Errorf("TTL %s: NotAfter %s after the issuer's %s", ttl, is.Cert.NotAfter, m.Issuer.NotAfter)
		}
	}

	// Near the issuer's end: the CA's clock jumps to 10 minutes before the
	// issuer expires. A 30-day request is capped at the issuer's NotAfter
	// and is still not expired at issue time; at or past it, Issue refuses.
	for _, before := range []time.Duration{10 * time.Minute, time.Minute, time.Second} {
		clk.Set(m.Issuer.NotAfter.Add(-before))
		is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: ca.MaxTTL})
		if err != nil {
			t.Fatalf("%s before the issuer's end: %v", before, err)
		}
		if !is.Cert.NotAfter.Equal(m.Issuer.NotAfter.UTC()) {
			t.Errorf("%s before the issuer's end: NotAfter %s, want capped at %s", before, is.Cert.NotAfter, m.Issuer.NotAfter)
		}
		if !is.Cert.NotAfter.After(clk.Now()) {
			t.Errorf("%s before the issuer's end: issued already expired", before)
		}
	}
	clk.Set(m.Issuer.NotAfter)
	if _, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: time.Hour}); err == nil {
		t.Error("issued at the issuer's NotAfter")
	}
}
