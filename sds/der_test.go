package sds_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/sds"
)

func der(t *testing.T, p []byte) []byte {
	t.Helper()
	b, rest := pem.Decode(p)
	if b == nil || len(bytes.TrimSpace(rest)) != 0 {
		t.Fatal("want one PEM block")
	}
	return b.Bytes
}

// TestTLSSecretDERMatchesPEM checks that the DER path builds the very
// secret TLSSecret builds from the same certificates and key as PEM, with
// and without a cache, and again from the cache.
func TestTLSSecretDERMatchesPEM(t *testing.T) {
	m := newMaterial(t)
	const name = "spiffe://mesh.local/echo"
	leaf, inter, key := der(t, m.leafPEM), der(t, m.interPEM), der(t, m.keyPKCS8)
	tests := []struct {
		name     string
		chain    [][]byte
		chainPEM []byte
	}{
		{"leaf only", [][]byte{leaf}, m.leafPEM},
		{"leaf and intermediate", [][]byte{leaf, inter}, cat(m.leafPEM, m.interPEM)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want, err := sds.TLSSecret(name, tt.chainPEM, m.keyPKCS8)
			if err != nil {
				t.Fatal(err)
			}
			cache := sds.NewIssuerCache(0)
			for _, c := range []*sds.IssuerCache{nil, cache, cache} {
				got, err := sds.TLSSecretDER(name, tt.chain, key, c)
				if err != nil {
					t.Fatalf("TLSSecretDER: %v", err)
				}
				if !proto.Equal(got, want) {
					t.Fatalf("DER path built %v, PEM path %v", got, want)
				}
			}
			if got, want := cache.Len(), len(tt.chain)-1; got != want {
				t.Fatalf("cache holds %d certificates, want %d (the leaf is never cached)", got, want)
			}
		})
	}
}

func TestTLSSecretDERRejects(t *testing.T) {
	m := newMaterial(t)
	const name = "spiffe://mesh.local/echo"
	leaf, inter, key := der(t, m.leafPEM), der(t, m.interPEM), der(t, m.keyPKCS8)
	corrupt := func(b []byte) []byte {
		c := bytes.Clone(b)
		c[len(c)/2] ^= 0xff
		return c[:len(c)-3]
	}
	tests := []struct {
		name        string
		id          string
		chain       [][]byte
		key         []byte
		want        error
		wantMessage string
	}{
		{"empty name", "", [][]byte{leaf}, key, sds.ErrNoName, "name is empty"},
		{"no certificate", name, nil, key, sds.ErrBadChain, "no certificate"},
		{"corrupt leaf", name, [][]byte{corrupt(leaf), inter}, key, sds.ErrBadChain, "certificate 1"},
		{"corrupt intermediate", name, [][]byte{leaf, corrupt(inter)}, key, sds.ErrBadChain, "certificate 2"},
		{"key is not PKCS#8", name, [][]byte{leaf}, der(t, m.keyEC), sds.ErrBadKey, "not a PKCS#8 key"},
		{"corrupt key", name, [][]byte{leaf}, corrupt(key), sds.ErrBadKey, "not a PKCS#8 key"},
		{"key of another identity", name, [][]byte{leaf}, der(t, m.otherKeyPKCS8), sds.ErrKeyChain, "does not match"},
		{"key matches the intermediate only", name, [][]byte{der(t, m.rsaLeafPEM), inter}, key, sds.ErrKeyChain, "does not match"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cache := sds.NewIssuerCache(0)
			s, err := sds.TLSSecretDER(tt.id, tt.chain, tt.key, cache)
			if err == nil {
				t.Fatalf("TLSSecretDER() = %v, want an error", s)
			}
			if !errors.Is(err, tt.want) || !strings.Contains(err.Error(), tt.wantMessage) {
				t.Fatalf("error = %q, want errors.Is %v and %q", err, tt.want, tt.wantMessage)
			}
			for _, k := range [][]byte{m.keyPKCS8, m.keyEC, m.otherKeyPKCS8} {
				if keyLeaks(err, k) {
					t.Errorf("error quotes key bytes: %q", err)
				}
			}
		})
	}
}

// issuerLike makes a CA certificate with inter's serial and subject on a
// fresh key: another certificate a cache keyed by serial would confuse
// with it.
func issuerLike(t *testing.T, inter []byte) []byte {
	t.Helper()
	orig, err := x509.ParseCertificate(inter)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: orig.SerialNumber, Subject: orig.Subject,
		NotBefore: orig.NotBefore, NotAfter: orig.NotAfter,
		BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign,
	}
	d, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestIssuerCacheExactBytes checks that a cached certificate is served only
// for its exact bytes: another certificate with the same serial, or the
// cached one with a byte changed, is parsed and sent as itself, and one
// that no longer parses is refused even though its serial is cached.
func TestIssuerCacheExactBytes(t *testing.T) {
	m := newMaterial(t)
	const name = "spiffe://mesh.local/echo"
	leaf, inter, key := der(t, m.leafPEM), der(t, m.interPEM), der(t, m.keyPKCS8)
	cache := sds.NewIssuerCache(0)
	chainOf := func(t *testing.T, issuer []byte) []byte {
		t.Helper()
		s, err := sds.TLSSecretDER(name, [][]byte{leaf, issuer}, key, cache)
		if err != nil {
			t.Fatal(err)
		}
		return s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
	}
	if got := chainOf(t, inter); !bytes.Equal(got, cat(m.leafPEM, m.interPEM)) {
		t.Fatal("first chain is not leaf then intermediate")
	}

	same := issuerLike(t, inter)
	want := cat(m.leafPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: same}))
	if got := chainOf(t, same); !bytes.Equal(got, want) {
		t.Fatal("a certificate with the cached one's serial was served the cached bytes")
	}

	// The signature's last byte: the certificate still parses, and is
	// another certificate.
	flipped := bytes.Clone(inter)
	flipped[len(flipped)-1] ^= 0x01
	want = cat(m.leafPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: flipped}))
	if got := chainOf(t, flipped); !bytes.Equal(got, want) {
		t.Fatal("the cached certificate with a byte changed was served the cached bytes")
	}
	if got := cache.Len(); got != 3 {
		t.Fatalf("cache holds %d certificates, want 3 distinct ones", got)
	}

	truncated := inter[:len(inter)-1]
	if _, err := sds.TLSSecretDER(name, [][]byte{leaf, truncated}, key, cache); !errors.Is(err, sds.ErrBadChain) {
		t.Fatalf("a truncated copy of a cached certificate: err = %v, want ErrBadChain", err)
	}
}

// TestIssuerCacheBounded checks that a cache never holds more than its
// size, however many distinct certificates pass through it, and still
// serves each one right.
func TestIssuerCacheBounded(t *testing.T) {
	m := newMaterial(t)
	const name = "spiffe://mesh.local/echo"
	leaf, key := der(t, m.leafPEM), der(t, m.keyPKCS8)
	const size, issuers = 3, 10
	cache := sds.NewIssuerCache(size)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC)
	most := 0
	for round := range 2 {
		for i := range issuers {
			tmpl := &x509.Certificate{
				SerialNumber: big.NewInt(int64(100 + i)), Subject: pkix.Name{CommonName: "issuer"},
				NotBefore: now, NotAfter: now.Add(time.Hour),
				BasicConstraintsValid: true, IsCA: true, KeyUsage: x509.KeyUsageCertSign,
			}
			d, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
			if err != nil {
				t.Fatal(err)
			}
			s, err := sds.TLSSecretDER(name, [][]byte{leaf, d}, key, cache)
			if err != nil {
				t.Fatal(err)
			}
			want := cat(m.leafPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d}))
			if !bytes.Equal(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), want) {
				t.Fatalf("round %d, issuer %d: wrong chain", round, i)
			}
			most = max(most, cache.Len())
		}
	}
	if most > size || most == 0 {
		t.Fatalf("cache held up to %d certificates, want 1 to %d", most, size)
	}
	t.Logf("%d distinct issuers twice through a cache of %d: at most %d held", issuers, size, most)
}

// BenchmarkTLSSecretDER compares a certificate secret built from stored DER
// through PEM (encode, then TLSSecret decodes, parses every certificate and
// encodes again) with TLSSecretDER and a cache of the issuers.
func BenchmarkTLSSecretDER(b *testing.B) {
	m := newMaterial(&testing.T{})
	const name = "spiffe://mesh.local/echo"
	leafBlock, _ := pem.Decode(m.leafPEM)
	interBlock, _ := pem.Decode(m.interPEM)
	keyBlock, _ := pem.Decode(m.keyPKCS8)
	chain := [][]byte{leafBlock.Bytes, interBlock.Bytes}
	b.Run("via PEM", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var p []byte
			for _, d := range chain {
				p = append(p, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: d})...)
			}
			k := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyBlock.Bytes})
			if _, err := sds.TLSSecret(name, p, k); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("DER", func(b *testing.B) {
		cache := sds.NewIssuerCache(0)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := sds.TLSSecretDER(name, chain, keyBlock.Bytes, cache); err != nil {
				b.Fatal(err)
			}
		}
	})
}
