package registry

import (
	"context"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// TestRenewLimitWindow: renewals beyond RenewBurst in RenewWindow are
// refused with the time of the next allowed one; the count is in the
// store, so a new registry on the same store keeps it; the window ends on
// time.
func TestRenewLimitWindow(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	st := openStore(t, dir)
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	_, tok, err := r.AddNode(ctx, AddNode{Name: "n1"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "n1", tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < RenewBurst; i++ {
		if _, err := r.RenewNode(ctx, "n1", nodeCertOf(t, r, "n1"), csr(t)); err != nil {
			t.Fatalf("renewal %d: %v", i+1, err)
		}
	}
	_, err = r.RenewNode(ctx, "n1", nodeCertOf(t, r, "n1"), csr(t))
	if !errors.Is(err, ErrRateLimited) {
		t.Fatalf("renewal %d: %v", RenewBurst+1, err)
	}
	t.Logf("refusal: %v", err)
	certs := func() int {
		n := 0
		st.View(ctx, func(tx *store.Tx) error {
			cs, err := tx.CertsFor(nodeSubject("n1"))
			n = len(cs)
			return err
		})
		return n
	}
	if got := certs(); got != 1+RenewBurst {
		t.Fatalf("%d node certificates stored, want %d: a refused renewal must sign nothing", got, 1+RenewBurst)
	}
	// Another registry on the same store (a restart, a replica) counts on.
	r2 := newRegistry(t, st, clk)
	if _, err := r2.RenewNode(ctx, "n1", nodeCertOf(t, r2, "n1"), csr(t)); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("after a restart: %v", err)
	}
	clk.Add(RenewWindow - 1)
	if _, err := r2.RenewNode(ctx, "n1", nodeCertOf(t, r2, "n1"), csr(t)); !errors.Is(err, ErrRateLimited) {
		t.Fatalf("just before the window ends: %v", err)
	}
	clk.Add(1)
	if _, err := r2.RenewNode(ctx, "n1", nodeCertOf(t, r2, "n1"), csr(t)); err != nil {
		t.Fatalf("after the window: %v", err)
	}
	if err := st.Check(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestNodeRevokeWhenReKeyFails: a re-key that cannot be issued does not
// hold up the node's revocation; it is audited as failed with what to do.
func TestNodeRevokeWhenReKeyFails(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "test"); err != nil {
		t.Fatal(err)
	}
	if _, _, err := r.AddNode(ctx, AddNode{Name: "n1", Identities: []string{"web"}}, "test"); err != nil {
		t.Fatal(err)
	}
	before, err := r.Identity(ctx, "web")
	if err != nil {
		t.Fatal(err)
	}
	r.issue = func(context.Context, ca.Request) (*ca.Issued, string, error) {
		return nil, "", errors.New("signer unavailable")
	}
	if _, err := r.RevokeNode(ctx, "n1", "test", "test"); err != nil {
		t.Fatalf("node revoke with a failing re-key: %v", err)
	}
	n, err := r.Node(ctx, "n1")
	if err != nil || n.State != store.StateRevoked {
		t.Fatalf("node after revoke: %+v %v", n, err)
	}
	after, _ := r.Identity(ctx, "web")
	if after.Identity.CurrentSerial != before.Identity.CurrentSerial {
		t.Fatal("identity changed although its re-key failed")
	}
	found := false
	for _, ev := range events(t, r) {
		found = found || ev.Action == ActionCertReissue && ev.Outcome == store.OutcomeFailed && ev.Identity == "web"
	}
	if !found {
		t.Fatal("failed re-key not audited")
	}
}

// nodeCertOf is the node certificate node uses now, as its connections
// present it.
func nodeCertOf(t *testing.T, r *Registry, node string) *x509.Certificate {
	t.Helper()
	var der []byte
	err := r.cfg.Store.View(context.Background(), func(tx *store.Tx) error {
		n, err := tx.Node(node)
		if err != nil {
			return err
		}
		c, err := tx.Cert(n.CertSerial)
		der = c.DER
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestRenewNeedsTheCurrentCertificate: a renewal is recorded only for the
// certificate the node uses now. A connection made with a certificate that
// a new join has replaced (a stolen copy, in the moment before its
// connection is closed) cannot renew, nor can a certificate meshca did not
// record byte for byte.
func TestRenewNeedsTheCurrentCertificate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	_, tok, err := r.AddNode(ctx, AddNode{Name: "n1"}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "n1", tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	old := nodeCertOf(t, r, "n1")
	tok, err = r.NewJoinToken(ctx, "n1", "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "n1", tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	cur := nodeCertOf(t, r, "n1")

	if _, err := r.RenewNode(ctx, "n1", old, csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("renewal with the certificate a new join replaced: %v, want ErrDenied", err)
	}
	forged := *cur
	forged.Raw = append([]byte(nil), cur.Raw...)
	forged.Raw[len(forged.Raw)-1] ^= 0xff // same serial, other bytes
	if _, err := r.RenewNode(ctx, "n1", &forged, csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("renewal with a certificate meshca did not record: %v, want ErrDenied", err)
	}
	if _, err := r.RenewNode(ctx, "n1", nil, csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("renewal without a certificate: %v, want ErrDenied", err)
	}
	if _, err := r.RenewNode(ctx, "n1", cur, csr(t)); err != nil {
		t.Fatalf("renewal with the current certificate: %v", err)
	}
}
