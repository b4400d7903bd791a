package app_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// TestAdminCertificateJudgedByMeshcaClock presents an admin credential to
// the mTLS admin listener while it is valid, and again once meshca's clock
// has passed its NotAfter: the second handshake is refused. meshca judges
// every certificate by its own clock, the admin listener included.
func TestAdminCertificateJudgedByMeshcaClock(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshMTLS(t, clk, &lineLog{})
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "ops", Admin: true, TTL: "1h"}, nil, http.StatusCreated)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	var out api.Cert
	m.admin("POST", api.PathCerts+"/ops", api.IssueCertRequest{CSRPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))}, &out, http.StatusCreated)
	var chain [][]byte
	for rest := []byte(out.ChainPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		chain = append(chain, b.Bytes)
	}
	cert := &tls.Certificate{Certificate: chain, PrivateKey: key}

	get := func() error {
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
			InsecureSkipVerify: true, // the server's identity is not what this test is about
			Certificates:       []tls.Certificate{*cert},
		}}}
		defer c.CloseIdleConnections()
		resp, err := c.Get("https://" + m.app.AdminMTLS + api.PathIdentities)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	}
	if err := get(); err != nil {
		t.Fatalf("a valid admin credential was refused: %v", err)
	}
	clk.Set(out.NotAfter.Add(time.Minute))
	if err := get(); err == nil {
		t.Fatal("an admin credential past its NotAfter on meshca's clock was accepted")
	}
}
