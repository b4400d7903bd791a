package registry

import (
	"context"
	"crypto/x509"
	"errors"
	"math/big"
	"testing"

	"github.com/meshca/meshca/internal/clock"
)

// TestSignCSRComparedNodeCertificate: once a node certificate was found
// equal to its record, later CSRs on it skip reading the record again, and
// still nothing else passes for it: other bytes under its serial, the same
// certificate claimed for another node, or the certificate once the node
// is revoked.
func TestSignCSRComparedNodeCertificate(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "test"); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"a1", "a2"} {
		_, tok, err := r.AddNode(ctx, AddNode{Name: name, Identities: []string{"web"}, Agent: true}, "test")
		if err != nil {
			t.Fatal(err)
		}
		if _, err := r.Join(ctx, name, tok.Token, csr(t), "test"); err != nil {
			t.Fatal(err)
		}
	}
	cert := nodeCertOf(t, r, "a1")
	if r.comparedNodeCerts.has("a1", cert) {
		t.Fatal("a certificate counts as compared before any CSR")
	}
	if _, err := r.SignCSR(ctx, "a1", cert, "web", csr(t)); err != nil {
		t.Fatal(err)
	}
	if !r.comparedNodeCerts.has("a1", cert) {
		t.Fatal("the certificate of a signed CSR was not remembered as compared")
	}

	forged := *cert
	forged.Raw = append([]byte(nil), cert.Raw...)
	forged.Raw[len(forged.Raw)-1] ^= 0xff // same serial, other bytes
	if r.comparedNodeCerts.has("a1", &forged) {
		t.Fatal("other bytes under a compared serial count as compared")
	}
	if _, err := r.SignCSR(ctx, "a1", &forged, "web", csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("CSR with other bytes under a compared serial: %v, want ErrDenied", err)
	}
	if _, err := r.SignCSR(ctx, "a2", cert, "web", csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("CSR for node a2 with a1's certificate: %v, want ErrDenied", err)
	}
	if _, err := r.SignCSR(ctx, "a1", cert, "web", csr(t)); err != nil {
		t.Fatalf("CSR with the compared certificate: %v", err)
	}

	if _, err := r.RevokeNode(ctx, "a1", "test", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := r.SignCSR(ctx, "a1", cert, "web", csr(t)); !errors.Is(err, ErrDenied) {
		t.Fatalf("CSR after the node was revoked: %v, want ErrDenied", err)
	}
}

// TestComparedCertsBounded: the set of compared certificates never grows
// past its bound.
func TestComparedCertsBounded(t *testing.T) {
	var c comparedCerts
	for i := range maxComparedCerts + 10 {
		c.add("n", &x509.Certificate{Raw: []byte{byte(i), byte(i >> 8)}, SerialNumber: big.NewInt(int64(i) + 1)})
		if n := len(c.m); n > maxComparedCerts {
			t.Fatalf("%d compared certificates kept; the bound is %d", n, maxComparedCerts)
		}
	}
	i := maxComparedCerts + 9
	last := &x509.Certificate{Raw: []byte{byte(i), byte(i >> 8)}, SerialNumber: big.NewInt(int64(i) + 1)}
	if !c.has("n", last) {
		t.Fatal("the last certificate added is not kept")
	}
}
