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

// TestSignCSRNeedsTheCurrentNodeCertificate: an agent's CSR is signed only
// with the node certificate the node uses now, byte for byte as recorded;
// an empty CSR is refused before the CA could make a key; the CSR count is
// kept per window, without rewriting the node.
func TestSignCSRNeedsTheCurrentNodeCertificate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	clk := clock.NewFake(t0)
	r := newRegistry(t, st, clk)
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "test"); err != nil {
		t.Fatal(err)
	}
	_, tok, err := r.AddNode(ctx, AddNode{Name: "a1", Identities: []string{"web"}, Agent: true}, "test")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.Join(ctx, "a1", tok.Token, csr(t), "test"); err != nil {
		t.Fatal(err)
	}
	old := nodeCertOf(t, r, "a1")
	first, err := r.SignCSR(ctx, "a1", old, "web", csr(t))
	if err != nil {
		t.Fatal(err)
	}

	// The node renews its node certificate and uses the new one: the old
	// one can no longer have CSRs signed.
	if _, err := r.RenewNode(ctx, "a1", old, csr(t)); err != nil {
		t.Fatal(err)
	}
	var next string
	if err := st.View(ctx, func(tx *store.Tx) error {
		n, err := tx.Node("a1")
		next = n.NextSerial
		return err
	}); err != nil {
		t.Fatal(err)
	}
	renewed := certBySerial(t, r, next)
	if _, err := r.AuthenticateNode(ctx, renewed); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SignCSR(ctx, "a1", old, "web", csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("CSR with the replaced node certificate: %v, want ErrDenied", err)
	}
	forged := *renewed
	forged.Raw = append([]byte(nil), renewed.Raw...)
	forged.Raw[len(forged.Raw)-1] ^= 0xff // same serial, other bytes
	if _, err := r.SignCSR(ctx, "a1", &forged, "web", csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("CSR with a node certificate meshca did not record: %v, want ErrDenied", err)
	}
	before := certCount(t, st, "web")
	if _, err := r.SignCSR(ctx, "a1", renewed, "web", nil); !errors.Is(err, ca.ErrInvalidRequest) {
		t.Fatalf("empty CSR: %v, want ca.ErrInvalidRequest", err)
	}
	if n := certCount(t, st, "web"); n != before {
		t.Fatalf("an empty CSR made %d certificates", n-before)
	}

	// The count: the first CSR and this one share a window; the node's
	// record is not rewritten for them.
	v := st.NodesVersion()
	second, err := r.SignCSR(ctx, "a1", renewed, "web", csr(t))
	if err != nil {
		t.Fatal(err)
	}
	if st.NodesVersion() != v {
		t.Fatal("signing a CSR rewrote the node record")
	}
	err = st.View(ctx, func(tx *store.Tx) error {
		c, err := tx.SignCount("a1")
		if err != nil || c.Signs != 2 || !c.WindowStart.Equal(t0) {
			t.Fatalf("count %+v, %v; want 2 since %s", c, err, t0)
		}
		h, err := tx.HolderCert("web", "a1")
		if err != nil || h.Serial != second.Serial || h.Serial == first.Serial {
			t.Fatalf("current holder certificate %+v, %v; want %s", h, err, second.Serial)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	clk.Add(SignWindow)
	if _, err := r.SignCSR(ctx, "a1", renewed, "web", csr(t)); err != nil {
		t.Fatal(err)
	}
	_ = st.View(ctx, func(tx *store.Tx) error {
		if c, _ := tx.SignCount("a1"); c.Signs != 1 || !c.WindowStart.Equal(t0.Add(SignWindow)) {
			t.Fatalf("count after a window: %+v", c)
		}
		return nil
	})
}

// certBySerial is the recorded certificate serial, parsed.
func certBySerial(t *testing.T, r *Registry, serial string) *x509.Certificate {
	t.Helper()
	var der []byte
	if err := r.cfg.Store.View(context.Background(), func(tx *store.Tx) error {
		c, err := tx.Cert(serial)
		der = c.DER
		return err
	}); err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
