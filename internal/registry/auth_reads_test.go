package registry

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// etcdRanges is how many range requests (reads) the embedded etcd members
// of this process have served: etcd's own counter, so that every read
// meshca sends is counted where it arrives.
func etcdRanges(t *testing.T) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "etcd_mvcc_range_total" {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatal("etcd_mvcc_range_total not found among the process's metrics")
	return 0
}

// joinedNode registers node on r and joins it; it returns the node's
// certificate.
func joinedNode(t *testing.T, r *Registry, node string) *x509.Certificate {
	t.Helper()
	ctx := context.Background()
	_, tok, err := r.AddNode(ctx, AddNode{Name: node}, "test")
	if err != nil {
		t.Fatal(err)
	}
	j, err := r.Join(ctx, node, tok.Token, csr(t), "test")
	if err != nil {
		t.Fatal(err)
	}
	b, _ := pem.Decode(j.ChainPEM)
	leaf, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return leaf
}

// TestAuthenticateNodeEtcdReads counts the reads etcd serves for a node's
// TLS handshake: the issuing CAs its chain is verified against (what xds
// Config.Roots reads) and AuthenticateNode. The first handshake with a
// certificate also reads its record; every later one reads the CA set,
// the node and its certificate's revocation record, nothing more.
func TestAuthenticateNodeEtcdReads(t *testing.T) {
	ctx := context.Background()
	e := testkit.StartEtcd(t)
	sealer, err := seal.LoadOrCreate(filepath.Join(t.TempDir(), testkit.KEKFile))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenEtcd(store.EtcdConfig{Endpoints: []string{e.Endpoint}, Prefix: "/auth-reads", Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := newRegistry(t, st, clock.NewFake(t0))
	auth := r.cfg.Issuer.(*authority.Authority)
	leaf := joinedNode(t, r, "n1")

	handshake := func() float64 {
		t.Helper()
		before := etcdRanges(t)
		if len(auth.IssuingCAs()) == 0 {
			t.Fatal("no issuing CAs")
		}
		if _, err := r.AuthenticateNode(ctx, leaf); err != nil {
			t.Fatal(err)
		}
		return etcdRanges(t) - before
	}
	first := handshake()
	const n = 20
	var later float64
	for range n {
		later += handshake()
	}
	t.Logf("etcd reads per node handshake (issuing CAs + AuthenticateNode): first %.0f, then %.2f on average over %d (5 each before)", first, later/n, n)
	if first != 4 {
		t.Errorf("first handshake: %.0f etcd reads, want 4 (CA set, node, certificate, revocation)", first)
	}
	if later != 3*n {
		t.Errorf("later handshakes: %.0f etcd reads in %d, want 3 each (CA set, node, revocation)", later, n)
	}
}

// TestAuthenticateNodeComparedOnce: a certificate found equal to its record
// is not read again, and still nothing else passes for it: other bytes
// under its serial, or the certificate once its node is revoked.
func TestAuthenticateNodeComparedOnce(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	leaf := joinedNode(t, r, "n1")
	if _, ok := r.comparedNodeCerts.comparedIssuer("n1", leaf); ok {
		t.Fatal("a certificate counts as compared before any authentication")
	}
	if _, err := r.AuthenticateNode(ctx, leaf); err != nil {
		t.Fatal(err)
	}
	issuer, ok := r.comparedNodeCerts.comparedIssuer("n1", leaf)
	if want := caOf(r).Issuer().SerialNumber.Text(16); !ok || issuer != want {
		t.Fatalf("after an authentication the certificate is remembered with issuer %q (%v), want %q", issuer, ok, want)
	}

	forged := *leaf
	forged.Raw = append([]byte(nil), leaf.Raw...)
	forged.Raw[len(forged.Raw)-1] ^= 0xff // same serial and node, other bytes
	if _, err := r.AuthenticateNode(ctx, &forged); !errors.Is(err, ErrDenied) {
		t.Fatalf("other bytes under a compared serial: %v, want ErrDenied", err)
	}
	if _, err := r.AuthenticateNode(ctx, leaf); err != nil {
		t.Fatalf("the compared certificate after a forged one: %v", err)
	}

	// The issuer is checked on every authentication, remembered or not:
	// in the Issuer's CA set, or else in the store's.
	r.cfg.Issuer = issuingAs{Issuer: r.cfg.Issuer}
	if _, err := r.AuthenticateNode(ctx, leaf); err != nil {
		t.Fatalf("the Issuer not naming the issuer yet, the store's CA set does: %v", err)
	}
	r.comparedNodeCerts.addIssued("n1", leaf, "ff") // as if issued by a CA retired since
	if _, err := r.AuthenticateNode(ctx, leaf); !errors.Is(err, ErrDenied) || !strings.Contains(err.Error(), "no longer issues from") {
		t.Fatalf("a compared certificate of a retired issuer: %v, want ErrDenied saying so", err)
	}
	r.comparedNodeCerts.addIssued("n1", leaf, issuer)
	if _, err := r.RevokeNode(ctx, "n1", "decommissioned", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.AuthenticateNode(ctx, leaf); !errors.Is(err, ErrNodeRevoked) || !errors.Is(err, ErrDenied) {
		t.Fatalf("compared certificate of a revoked node: %v, want ErrNodeRevoked", err)
	}
}

// issuingAs is an Issuer whose CA set names serials: one that has not
// seen a change of the CA set yet.
type issuingAs struct {
	Issuer
	serials []string
}

func (i issuingAs) IssuingSerials() []string { return i.serials }
