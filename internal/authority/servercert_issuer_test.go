package authority_test

import (
	"context"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
)

// TestServerCertFollowsItsIssuer: a server certificate source made before
// a root rotation serves the same certificate while its issuer serves, and
// a new one under the new issuer once the old CA retires, although the old
// certificate is far from its renewal time: the signature is checked
// against each new issuer, not only once.
func TestServerCertFollowsItsIssuer(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	defer st.Close()
	clk := clock.NewFake(t0)
	r := newRig(t, st, clk)
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo"}, "test"); err != nil {
		t.Fatal(err)
	}
	joinNode(t, r, "n1", "echo")
	sc, err := r.ServerCert(nil, 24*time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	first, err := sc.Get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := sc.Get(nil); again != first {
		t.Fatal("a second handshake got another certificate while nothing changed")
	}
	if err := r.StartRotation(ctx, true, "test"); err != nil {
		t.Fatal(err)
	}
	clk.Add(authority.PublishGrace)
	if _, err := r.AdvanceRotation(ctx, acks(0, 1)); err != nil {
		t.Fatal(err)
	}
	if mid, _ := sc.Get(nil); mid != first {
		t.Fatal("the server certificate changed before the old CA retired")
	}
	if _, err := r.RenewNode(ctx, "n1", nodeCertOf(t, r, "n1"), csr(t)); err != nil {
		t.Fatal(err)
	}
	r.rekey(t)
	if phase, err := r.AdvanceRotation(ctx, acks(0, 0)); err != nil || phase != "" {
		t.Fatalf("rotation not done: %q %v", phase, err)
	}
	after, err := sc.Get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if after == first || after.Leaf.CheckSignatureFrom(r.CA().Issuer()) != nil {
		t.Fatal("after the old CA retired the source still serves the certificate it signed")
	}
}
