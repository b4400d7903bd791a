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

// etcdKVRequests is how many KV requests (Range and Txn: each one round
// trip) the embedded etcd members of this process have been sent, by
// etcd's own gRPC counter.
func etcdKVRequests(t *testing.T) float64 {
	t.Helper()
	mfs, err := prometheus.DefaultGatherer.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, mf := range mfs {
		if mf.GetName() != "grpc_server_started_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["grpc_service"] == "etcdserverpb.KV" && (labels["grpc_method"] == "Range" || labels["grpc_method"] == "Txn") {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// TestAuthenticateNodeEtcdReads counts the etcd round trips, and the
// records read, of a node's TLS handshake: its chain verified against the
// issuing CAs as the change feed brought them (what xds
// Config.LoadedRoots returns: no read once each CA was seen), and
// AuthenticateNode, which reads the node, its certificate's revocation
// record and the CA set, and the certificate record the first time, all in
// one round trip.
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
	if len(auth.LoadedIssuingCAs()) == 0 { // the first sight of the CA reads it
		t.Fatal("no issuing CAs")
	}

	handshake := func() (trips, records float64) {
		t.Helper()
		trips0, records0 := etcdKVRequests(t), etcdRanges(t)
		if len(auth.LoadedIssuingCAs()) == 0 {
			t.Fatal("no issuing CAs")
		}
		if _, err := r.AuthenticateNode(ctx, leaf); err != nil {
			t.Fatal(err)
		}
		return etcdKVRequests(t) - trips0, etcdRanges(t) - records0
	}
	firstTrips, firstRecords := handshake()
	const n = 20
	var laterTrips, laterRecords float64
	for range n {
		trips, records := handshake()
		laterTrips += trips
		laterRecords += records
	}
	t.Logf("etcd per node handshake: first %.0f round trip(s) reading %.0f records, then %.2f round trip(s) reading %.2f records on average over %d (before: 4 and 3 round trips, one record each)",
		firstTrips, firstRecords, laterTrips/n, laterRecords/n, n)
	if firstTrips != 1 || firstRecords != 4 {
		t.Errorf("first handshake: %.0f etcd round trips reading %.0f records, want 1 reading 4 (node, revocation, CA set, certificate)", firstTrips, firstRecords)
	}
	if laterTrips != n || laterRecords != 3*n {
		t.Errorf("later handshakes: %.0f etcd round trips reading %.0f records in %d, want 1 reading 3 each (node, revocation, CA set)", laterTrips, laterRecords, n)
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

	// The issuer is checked on every authentication, remembered or not,
	// in the store's CA set.
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
