package store_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// etcdTLSFiles are the PEM files of the embedded member's TLS listener and
// of a client allowed on it.
type etcdTLSFiles struct {
	ca, serverCert, serverKey, clientCert, clientKey string
	otherCA                                          string // a CA that signed nothing here
}

var etcdTLS etcdTLSFiles

// writeTLSFiles makes a CA, a server certificate for 127.0.0.1 and a
// client certificate in dir.
func writeTLSFiles(dir string) (etcdTLSFiles, error) {
	f := etcdTLSFiles{}
	write := func(name, typ string, der []byte) (string, error) {
		p := filepath.Join(dir, name)
		return p, os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
	}
	newCA := func(name string) (*x509.Certificate, *ecdsa.PrivateKey, []byte, error) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
		if err != nil {
			return nil, nil, nil, err
		}
		cert, err := x509.ParseCertificate(der)
		return cert, key, der, err
	}
	leaf := func(ca *x509.Certificate, caKey *ecdsa.PrivateKey, serial int64, name string, usage []x509.ExtKeyUsage) (cert, key []byte, err error) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, nil, err
		}
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage,
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return nil, nil, err
		}
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		return der, kd, err
	}
	ca, caKey, caDER, err := newCA("etcd test CA")
	if err != nil {
		return f, err
	}
	_, _, otherDER, err := newCA("other CA")
	if err != nil {
		return f, err
	}
	sc, sk, err := leaf(ca, caKey, 2, "etcd", []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth})
	if err != nil {
		return f, err
	}
	cc, ck, err := leaf(ca, caKey, 3, "meshca", []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth})
	if err != nil {
		return f, err
	}
	for _, w := range []struct {
		dst       *string
		name, typ string
		der       []byte
	}{
		{&f.ca, "ca.pem", "CERTIFICATE", caDER},
		{&f.otherCA, "other-ca.pem", "CERTIFICATE", otherDER},
		{&f.serverCert, "server.pem", "CERTIFICATE", sc},
		{&f.serverKey, "server-key.pem", "PRIVATE KEY", sk},
		{&f.clientCert, "client.pem", "CERTIFICATE", cc},
		{&f.clientKey, "client-key.pem", "PRIVATE KEY", ck},
	} {
		if *w.dst, err = write(w.name, w.typ, w.der); err != nil {
			return f, err
		}
	}
	return f, nil
}

// TestEtcdTLS opens the store over the member's TLS listener, which asks
// for a client certificate: with meshca's client certificate it works;
// without one, or trusting another CA, OpenEtcd fails within DialTimeout.
func TestEtcdTLS(t *testing.T) {
	etcdEndpointFor(t)
	if etcdTLSEndpoint == "" {
		t.Fatal("the embedded etcd has no TLS listener (MESHCA_TEST_ETCD set?); run without it")
	}
	cfg := etcdConfig(t, newPrefix(t))
	cfg.Endpoints = []string{etcdTLSEndpoint}
	cfg.DialTimeout = time.Second
	good := store.EtcdTLS{CA: etcdTLS.ca, Cert: etcdTLS.clientCert, Key: etcdTLS.clientKey}
	cfg.TLS = good
	s := openEtcd(t, cfg)
	update(t, s, putIdentity("over-tls"))
	view(t, s, func(tx *store.Tx) error {
		_, err := tx.Identity("over-tls")
		return err
	})

	for _, tc := range []struct {
		name string
		tls  store.EtcdTLS
	}{
		{"no client certificate", store.EtcdTLS{CA: etcdTLS.ca}},
		{"other CA", store.EtcdTLS{CA: etcdTLS.otherCA, Cert: etcdTLS.clientCert, Key: etcdTLS.clientKey}},
		{"plain TCP to the TLS listener", store.EtcdTLS{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bad := cfg
			bad.TLS = tc.tls
			bad.DialTimeout = 500 * time.Millisecond
			start := time.Now()
			s, err := store.OpenEtcd(bad)
			if err == nil {
				s.Close()
				t.Fatal("OpenEtcd succeeded")
			}
			t.Logf("refused after %v: %v", time.Since(start).Round(time.Millisecond), err)
		})
	}
}
