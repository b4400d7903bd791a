package registry

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

func TestRevokeIdentity(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
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
	// The identity changed, no node record did, and the revocations every
	// node's CRL is signed from are committed (the authority signs it).
	if nodes, ids, revoked := feed.drain(); len(nodes) != 0 || !slices.Equal(ids, []string{"ops"}) || !revoked {
		t.Fatalf("the feed names nodes %v, identities %v, revocations %v; want only ops and its revocations", nodes, ids, revoked)
	}
	if res.Nodes == nil || !slices.Contains(res.Nodes, "n1") {
		t.Fatalf("reported nodes %v: every node's bundle carries the CRL", res.Nodes)
	}
	if got := revokedSerials(t, st); !slices.Equal(got, want) {
		t.Fatalf("revocation records %v, want %v", got, want)
	}

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

	// Revocations survive a restart.
	if err := st.Close(); err != nil {
		t.Fatal(err)
	}
	st = openStore(t, dir)
	defer st.Close()
	r = newRegistry(t, st, clk)
	if got := revokedSerials(t, st); !slices.Equal(got, want) {
		t.Fatalf("after restart the revocation records are %v", got)
	}
	if st, _ := r.Identity(ctx, "ops"); st.Identity.State != store.StateRevoked {
		t.Fatal("revocation lost across a restart")
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

// revokedSerials are the serials of the stored revocation records, sorted.
func revokedSerials(t *testing.T, st *store.Store) []string {
	t.Helper()
	var out []string
	if err := st.View(context.Background(), func(tx *store.Tx) error {
		revs, err := tx.Revocations()
		for _, rv := range revs {
			out = append(out, rv.Serial)
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	slices.Sort(out)
	return out
}
