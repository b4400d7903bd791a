package registry

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

func parseCRL(t *testing.T, p []byte) *x509.RevocationList {
	t.Helper()
	b, _ := pem.Decode(p)
	if b == nil || b.Type != "X509 CRL" {
		t.Fatalf("not a PEM CRL: %q", p)
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return crl
}

func crlSerials(crl *x509.RevocationList) []string {
	var out []string
	for _, e := range crl.RevokedCertificateEntries {
		out = append(out, fmt.Sprintf("%x", e.SerialNumber))
	}
	slices.Sort(out)
	return out
}

func TestRevokeIdentity(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	if r.CRL() != nil {
		t.Fatal("a CRL with nothing revoked")
	}
	for _, n := range []string{"echo", "ops"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: n, Admin: n == "ops", TTL: 24 * time.Hour}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := r.AddNode(ctx, AddNode{Name: "n1", Identities: []string{"echo"}}, "test"); err != nil {
		t.Fatal(err)
	}
	old, _ := r.Identity(ctx, "ops")
	clk.Add(10 * time.Minute)
	if _, err := r.ReissueIdentity(ctx, "ops", "test"); err != nil {
		t.Fatal(err)
	}
	cur, _ := r.Identity(ctx, "ops")
	csrCert, err := r.IssueFromCSR(ctx, "ops", csr(t), "test")
	if err != nil {
		t.Fatal(err)
	}
	feed := watchFeed(t, st)

	res, err := r.RevokeIdentity(ctx, "ops", "key compromise", "test")
	if err != nil {
		t.Fatal(err)
	}
	want := []string{old.Cert.Serial, cur.Cert.Serial, csrCert.Serial}
	slices.Sort(want)
	got := slices.Clone(res.Serials)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("revoked %v, want every unexpired certificate %v", got, want)
	}
	// The identity changed, no node record did, and the new CRL is
	// announced for every node's bundle.
	if nodes, ids, trust := feed.drain(); len(nodes) != 0 || !slices.Equal(ids, []string{"ops"}) || !trust {
		t.Fatalf("the feed names nodes %v, identities %v, trust %v; want only ops and the trust", nodes, ids, trust)
	}
	if res.Nodes == nil || !slices.Contains(res.Nodes, "n1") {
		t.Fatalf("reported nodes %v: every node's bundle carries the CRL", res.Nodes)
	}
	crl := parseCRL(t, r.CRL())
	if !slices.Equal(crlSerials(crl), want) {
		t.Fatalf("CRL lists %v", crlSerials(crl))
	}
	if err := crl.CheckSignatureFrom(r.CA().Issuer()); err != nil {
		t.Fatalf("CRL signature: %v", err)
	}
	if crl.Number == nil || crl.Number.Sign() <= 0 || !crl.NextUpdate.Equal(clk.Now().Add(CRLValidity)) {
		t.Fatalf("CRL number %v, next update %s", crl.Number, crl.NextUpdate)
	}
	firstNumber := crl.Number

	// Nothing more is issued for it, and its certificates stop working.
	if _, err := r.ReissueIdentity(ctx, "ops", "test"); !errors.Is(err, ErrDenied) {
		t.Fatalf("reissue after revoke: %v", err)
	}
	if _, err := r.IssueFromCSR(ctx, "ops", csr(t), "test"); !errors.Is(err, ErrDenied) {
		t.Fatalf("CSR after revoke: %v", err)
	}
	if _, err := r.RevokeIdentity(ctx, "ops", "", "test"); !errors.Is(err, ErrExists) {
		t.Fatalf("second revoke: %v", err)
	}
	leaf, _ := x509.ParseCertificate(csrCert.DER)
	if _, err := r.AuthorizeAdmin(ctx, leaf); !errors.Is(err, ErrDenied) {
		t.Fatalf("revoked admin certificate accepted: %v", err)
	}

	// The CRL is refreshed after a quarter of its validity, with a higher number.
	clk.Add(crlRefresh - time.Second)
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

	// Revocations survive a restart.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRegistry(t, st, clk)
	if got := crlSerials(parseCRL(t, r.CRL())); !slices.Equal(got, want) {
		t.Fatalf("after restart the CRL lists %v", got)
	}
	if st, _ := r.Identity(ctx, "ops"); st.Identity.State != store.StateRevoked {
		t.Fatal("revocation lost across a restart")
	}

	// Once every revoked certificate has expired, the CRL is withdrawn.
	clk.Add(25 * time.Hour)
	if err := r.RefreshCRL(ctx); err != nil {
		t.Fatal(err)
	}
	if r.CRL() != nil {
		t.Fatal("CRL kept after all its entries expired")
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

func TestRevokeNode(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	_, tok, err := r.AddNode(ctx, AddNode{Name: "n1"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	j, err := r.Join(ctx, "n1", tok.Token, csr(t), "test")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(j.ChainPEM)
	leaf, _ := x509.ParseCertificate(b.Bytes)
	if _, err := r.AuthenticateNode(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	feed := watchFeed(t, st)
	res, err := r.RevokeNode(ctx, "n1", "decommissioned", "test")
	if err != nil || !slices.Equal(res.Serials, []string{j.Serial}) {
		t.Fatalf("revoke node: %+v %v", res, err)
	}
	if nodes, _, _ := feed.drain(); !slices.Contains(nodes, "n1") {
		t.Fatalf("the feed names nodes %v: the revoked node's change is missing", nodes)
	}
	if _, err := r.AuthenticateNode(ctx, leaf); !errors.Is(err, ErrDenied) {
		t.Fatalf("revoked node authenticated: %v", err)
	}
	tok2, err := r.NewJoinToken(ctx, "n1", "test")
	if err == nil {
		if _, err := r.Join(ctx, "n1", tok2.Token, csr(t), "test"); !errors.Is(err, ErrToken) {
			t.Fatalf("revoked node joined again: %v", err)
		}
	}
}

// TestCRLCoversEveryIssuerInUse: once any CRL is published, every issuer
// whose leaves may be presented has one, or Envoy would refuse those
// leaves; during an intermediate rotation that is the old and the new.
func TestCRLCoversEveryIssuerInUse(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	for _, n := range []string{"echo", "web"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: n}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	oldIssuer := r.CA().Issuer()
	if _, err := r.RevokeIdentity(ctx, "web", "", "test"); err != nil {
		t.Fatal(err)
	}
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
