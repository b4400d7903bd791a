package authority_test

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

// TestCRLOfARevocation: the CRL stored after a revocation lists every
// unexpired certificate of the identity, is signed by the issuer, is
// signed again (with a higher number) only when due, survives a restart,
// and is withdrawn once its entries expire.
func TestCRLOfARevocation(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	if r.CRL() != nil {
		t.Fatal("a CRL with nothing revoked")
	}
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "ops", TTL: 24 * time.Hour}, "test"); err != nil {
		t.Fatal(err)
	}
	clk.Add(10 * time.Minute)
	if _, err := r.ReissueIdentity(ctx, "ops", "test"); err != nil {
		t.Fatal(err)
	}
	feed := watchFeed(t, st)
	res, err := r.RevokeIdentity(ctx, "ops", "key compromise", "test")
	if err != nil {
		t.Fatal(err)
	}
	publish(t, r)
	if _, _, trust := feed.drain(); !trust {
		t.Fatal("the stored CRL is not on the change feed")
	}
	want := slices.Clone(res.Serials)
	slices.Sort(want)
	crl := parseCRL(t, r.CRL())
	if len(want) != 2 || !slices.Equal(crlSerials(crl), want) {
		t.Fatalf("CRL lists %v, want %v", crlSerials(crl), want)
	}
	if err := crl.CheckSignatureFrom(r.CA().Issuer()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if crl.Number == nil || crl.Number.Sign() <= 0 || !crl.NextUpdate.Equal(clk.Now().Add(authority.CRLValidity)) {
		t.Fatalf("CRL number %v, next update %s", crl.Number, crl.NextUpdate)
	}
	firstNumber := crl.Number
	// Publishing again with nothing new signs nothing.
	publish(t, r)
	if n := parseCRL(t, r.CRL()).Number; n.Cmp(firstNumber) != 0 {
		t.Fatalf("CRL signed again (number %v) with nothing new", n)
	}

	// The CRL is refreshed after a quarter of its validity, with a higher number.
	clk.Add(authority.CRLRefresh - time.Second)
	if err := r.RefreshCRL(ctx); err != nil {
		t.Fatal(err)
	}
	if n := parseCRL(t, r.CRL()).Number; n.Cmp(firstNumber) != 0 {
		t.Fatal("CRL rebuilt before it was due")
	}
	clk.Add(time.Second)
	if err := r.RefreshCRL(ctx); err != nil {
		t.Fatal(err)
	}
	if n := parseCRL(t, r.CRL()).Number; n.Cmp(firstNumber) <= 0 {
		t.Fatalf("refreshed CRL number %v not above %v", n, firstNumber)
	}
	if age, ok := r.CRLAge(); !ok || age != 0 {
		t.Fatalf("CRL age %s %v just after a refresh", age, ok)
	}

	// The CRL is in the store: it survives a restart.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRig(t, st, clk)
	if got := crlSerials(parseCRL(t, r.CRL())); !slices.Equal(got, want) {
		t.Fatalf("after restart the CRL lists %v", got)
	}

	// Once every revoked certificate has expired, the CRL is withdrawn.
	clk.Add(25 * time.Hour)
	if err := r.RefreshCRL(ctx); err != nil {
		t.Fatal(err)
	}
	if r.CRL() != nil {
		t.Fatal("CRL kept after all its entries expired")
	}
	if _, ok := r.CRLAge(); ok {
		t.Fatal("a withdrawn CRL has an age")
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestCRLCoversEveryIssuerInUse: once any CRL is published, every issuer
// whose leaves may be presented has one, or Envoy would refuse those
// leaves; during an intermediate rotation that is the old and the new.
func TestCRLCoversEveryIssuerInUse(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRig(t, st, clock.NewFake(t0))
	for _, n := range []string{"echo", "web"} {
		if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: n}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	oldIssuer := r.CA().Issuer()
	if _, err := r.RevokeIdentity(ctx, "web", "", "test"); err != nil {
		t.Fatal(err)
	}
	publish(t, r)
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	newIssuer := r.CA().Issuer()
	var crls []*x509.RevocationList
	rest := r.CRL()
	for b, more := pem.Decode(rest); b != nil; b, more = pem.Decode(more) {
		c, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		crls = append(crls, c)
	}
	signedBy := func(issuer *x509.Certificate) *x509.RevocationList {
		for _, c := range crls {
			if c.CheckSignatureFrom(issuer) == nil {
				return c
			}
		}
		return nil
	}
	if c := signedBy(oldIssuer); c == nil || len(c.RevokedCertificateEntries) != 1 {
		t.Fatalf("previous issuer's CRL missing or wrong: %v", c)
	}
	if c := signedBy(newIssuer); c == nil || len(c.RevokedCertificateEntries) != 0 {
		t.Fatalf("new issuer has no (empty) CRL: %d CRLs", len(crls))
	}
}

// TestRunSignsTheCRLOfEveryCommittedRevocation: nobody calls the authority
// after a revocation; Run reads it from the change feed and stores the CRL
// that lists it, also for the node certificates a new join revokes.
func TestRunSignsTheCRLOfEveryCommittedRevocation(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st := openStore(t, dataDir(t))
	r := newRig(t, st, clock.NewFake(t0))
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo", TTL: 24 * time.Hour}, "test"); err != nil {
		t.Fatal(err)
	}
	_, tok, err := r.AddNode(ctx, registry.AddNode{Name: "n1"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	first, err := r.Join(ctx, "n1", tok.Token, csr(t), "test")
	if err != nil {
		t.Fatal(err)
	}
	sub := st.Subscribe(0)
	defer sub.Close()
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- r.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}()
	// stored waits for the next CRL record on the feed that lists serial.
	stored := func(serial string) time.Duration {
		t.Helper()
		start := time.Now()
		for {
			b, err := sub.Next(ctx)
			if err != nil {
				t.Fatalf("no CRL listing %s was stored: %v", serial, err)
			}
			for _, c := range b.Changes {
				if c.Kind != store.KindCRL {
					continue
				}
				if p := r.CRL(); p != nil {
					if _, ok := slices.BinarySearch(crlSerials(parseCRL(t, p)), serial); ok {
						return time.Since(start)
					}
				}
			}
		}
	}
	res, err := r.RevokeIdentity(ctx, "echo", "test", "test")
	if err != nil {
		t.Fatal(err)
	}
	took := stored(res.Serials[0])
	// A second join replaces (and revokes) the node's first certificate.
	tok2, err := r.NewJoinToken(ctx, "n1", "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "n1", tok2.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	took2 := stored(first.Serial)
	t.Logf("CRL stored from the change feed %s after an identity revocation returned, %s after a join that revoked a node certificate", took.Round(time.Microsecond), took2.Round(time.Microsecond))
	if took > 2*time.Second || took2 > 2*time.Second {
		t.Fatalf("CRL stored after %s and %s, want within 2s", took, took2)
	}
}
