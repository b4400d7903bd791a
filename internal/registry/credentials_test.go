package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"net/url"
	"testing"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

func csr(t *testing.T) []byte {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func TestAuthorizeAdmin(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRegistry(t, st, clock.NewFake(t0))
	for _, req := range []AddIdentity{{Name: "ops", Admin: true}, {Name: "echo"}} {
		if _, err := r.AddIdentity(ctx, req, "test"); err != nil {
			t.Fatal(err)
		}
	}
	leafOf := func(name string) *x509.Certificate {
		c, err := r.IssueFromCSR(ctx, name, csr(t), "test")
		if err != nil {
			t.Fatal(err)
		}
		leaf, err := x509.ParseCertificate(c.DER)
		if err != nil {
			t.Fatal(err)
		}
		return leaf
	}
	ops, echo := leafOf("ops"), leafOf("echo")
	if who, err := r.AuthorizeAdmin(ctx, ops); err != nil || who != "spiffe://mesh.local/ops" {
		t.Fatalf("admin refused: %q %v", who, err)
	}
	forged := *ops
	forged.SerialNumber = forged.SerialNumber.Add(forged.SerialNumber, forged.SerialNumber)
	foreign := *ops
	foreign.URIs = []*url.URL{{Scheme: "spiffe", Host: "evil.example", Path: "/ops"}}
	none := *ops
	none.URIs = nil
	for name, leaf := range map[string]*x509.Certificate{"not admin": echo, "unknown serial": &forged, "foreign trust domain": &foreign, "no SPIFFE ID": &none} {
		t.Run(name, func(t *testing.T) {
			before := len(events(t, r))
			if _, err := r.AuthorizeAdmin(ctx, leaf); !errors.Is(err, ErrDenied) {
				t.Fatalf("err = %v, want ErrDenied", err)
			}
			evs := events(t, r)
			if len(evs) != before+1 || evs[len(evs)-1].Action != ActionAdminAuth || evs[len(evs)-1].Outcome != store.OutcomeDenied {
				t.Fatalf("refusal not audited: %+v", evs[before:])
			}
		})
	}
}
