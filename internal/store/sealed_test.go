package store_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// swapField exchanges the JSON field name of two records of a bucket.
func swapField(t *testing.T, tx *bolt.Tx, bucket, field, a, b string) {
	t.Helper()
	bk := tx.Bucket([]byte(bucket))
	var ra, rb map[string]json.RawMessage
	if err := json.Unmarshal(bk.Get([]byte(a)), &ra); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(bk.Get([]byte(b)), &rb); err != nil {
		t.Fatal(err)
	}
	if ra[field] == nil || rb[field] == nil {
		t.Fatalf("records %s and %s have no %s field", a, b, field)
	}
	ra[field], rb[field] = rb[field], ra[field]
	for k, r := range map[string]map[string]json.RawMessage{a: ra, b: rb} {
		v, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if err := bk.Put([]byte(k), v); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSwappedSealedKeysDoNotOpen(t *testing.T) {
	s, dir := newStore(t)
	update(t, s, audited("cert.issue", func(tx *store.Tx) error {
		for _, c := range []store.Credential{testCert("web", "01", t0), testCert("api", "02", t0), testCert("db", "03", t0)} {
			if err := putCert(tx, c); err != nil {
				return err
			}
		}
		return nil
	}))
	check(t, s)
	s.Close()
	editFile(t, s.Path(), func(tx *bolt.Tx) error {
		swapField(t, tx, "certs", "sealed_key", "01", "02")
		return nil
	})

	s = openCfg(t, config(t, dir))
	view(t, s, func(tx *store.Tx) error {
		for _, serial := range []string{"01", "02"} {
			c, err := tx.Credential(serial)
			wantErr(t, err, store.ErrSealed)
			wantErr(t, err, seal.ErrOpen)
			if c.Key != nil {
				t.Errorf("Credential(%s) returned key bytes with an error", serial)
			}
		}
		if _, err := tx.Credential("03"); err != nil {
			t.Errorf("untouched cert 03: %v", err)
		}
		// Listing never unseals: the certificate is still readable.
		if certs, err := tx.CertsFor("web"); err != nil || len(certs) != 1 || !certs[0].KeyHeld {
			t.Errorf("CertsFor(web) = %+v, %v; want the certificate, key held", certs, err)
		}
		return nil
	})
	err := s.Check(ctx)
	wantErr(t, err, store.ErrSealed)
	for _, serial := range []string{"certificate 01", "certificate 02"} {
		if !strings.Contains(err.Error(), serial) {
			t.Errorf("Check error %q does not name %s", err, serial)
		}
	}
	if strings.Contains(err.Error(), "certificate 03") {
		t.Errorf("Check error %q names the intact certificate 03", err)
	}
}

func TestOtherKEKCannotOpenKeys(t *testing.T) {
	s, dir := newStore(t)
	update(t, s, audited("setup", func(tx *store.Tx) error {
		if err := tx.PutCA(store.CA{Serial: "r1", Key: []byte("ca key")}); err != nil {
			return err
		}
		return putCert(tx, testCert("web", "01", t0))
	}))
	s.Close()

	cfg := config(t, dir)
	cfg.Sealer = newSealer(t, 0x07)
	s = openCfg(t, cfg)
	view(t, s, func(tx *store.Tx) error {
		_, err := tx.Credential("01")
		wantErr(t, err, store.ErrSealed)
		_, err = tx.CA("r1")
		wantErr(t, err, store.ErrSealed)
		return nil
	})
	err := s.Check(ctx)
	wantErr(t, err, store.ErrSealed)
	if !strings.Contains(err.Error(), "CA r1") || !strings.Contains(err.Error(), "certificate 01") {
		t.Errorf("Check error %q does not name both records", err)
	}
}

func TestNoClearKeysInFile(t *testing.T) {
	s, _ := newStore(t)
	type secret struct {
		name     string
		der, pem []byte
		scalar   []byte
	}
	var secrets []secret
	newKey := func(name string) []byte {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		secrets = append(secrets, secret{
			name:   name,
			der:    der,
			pem:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
			scalar: k.D.FillBytes(make([]byte, 32)),
		})
		return der
	}
	ca := store.CA{Serial: "r1", Role: store.RoleRoot, Key: newKey("CA")}
	var certs []store.Credential
	for _, serial := range []string{"01", "02", "03"} {
		c := testCert("web", serial, t0)
		c.Key = newKey("cert " + serial)
		certs = append(certs, c)
	}
	update(t, s, audited("setup", func(tx *store.Tx) error {
		if err := tx.PutCA(ca); err != nil {
			return err
		}
		for _, c := range certs {
			if err := putCert(tx, c); err != nil {
				return err
			}
		}
		return nil
	}))
	// The keys still come back: the test would pass trivially if they were
	// not stored at all.
	view(t, s, func(tx *store.Tx) error {
		got, err := tx.CA("r1")
		if err != nil || !bytes.Equal(got.Key, ca.Key) {
			t.Errorf("CA key did not round-trip: %v", err)
		}
		for _, c := range certs {
			got, err := tx.Credential(c.Serial)
			if err != nil || !bytes.Equal(got.Key, c.Key) {
				t.Errorf("key of %s did not round-trip: %v", c.Serial, err)
			}
		}
		return nil
	})
	check(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	raw, err := os.ReadFile(filepath.Clean(s.Path()))
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, []byte("PRIVATE KEY")) {
		t.Error("db file contains \"PRIVATE KEY\"")
	}
	for _, sec := range secrets {
		for what, b := range map[string][]byte{"PKCS#8 DER": sec.der, "PEM": sec.pem, "private scalar": sec.scalar} {
			if bytes.Contains(raw, b) {
				t.Errorf("db file contains the %s of the %s key", what, sec.name)
			}
		}
	}
}

func TestCertLeavesKeySealed(t *testing.T) {
	s, dir := newStore(t)
	c := testCert("echo", "0a1b", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	c.Key = []byte("pkcs8 key bytes")
	csr := testCert("echo", "0a1c", time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	csr.Key, csr.KeyHeld = nil, false // issued from a CSR
	update(t, s, func(tx *store.Tx) error {
		if err := putCert(tx, c); err != nil {
			return err
		}
		if err := putCert(tx, csr); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{Action: "cert.issue"})
		return err
	})
	view(t, s, func(tx *store.Tx) error {
		full, err := tx.Credential("0a1b")
		if err != nil || string(full.Key) != string(c.Key) || !full.KeyHeld {
			t.Fatalf("Credential key = %q, held %t, %v", full.Key, full.KeyHeld, err)
		}
		if got, err := tx.Credential("0a1c"); err != nil || got.Key != nil || got.KeyHeld {
			t.Fatalf("Credential of a CSR certificate = key %q, held %t, %v", got.Key, got.KeyHeld, err)
		}
		_, err = tx.Cert("nope")
		wantErr(t, err, store.ErrNotFound)
		_, err = tx.Credential("nope")
		wantErr(t, err, store.ErrNotFound)
		return nil
	})
	s.Close()

	// With a key-encryption key that opens nothing, Cert still reads: it
	// never unseals.
	cfg := config(t, dir)
	cfg.Sealer = newSealer(t, 0x07)
	s = openCfg(t, cfg)
	view(t, s, func(tx *store.Tx) error {
		got, err := tx.Cert("0a1b")
		if err != nil || got.Serial != c.Serial || string(got.DER) != string(c.DER) || !got.NotAfter.Equal(c.NotAfter) || !got.KeyHeld {
			t.Fatalf("Cert = %+v, %v", got, err)
		}
		_, err = tx.Credential("0a1b")
		wantErr(t, err, store.ErrSealed)
		return nil
	})
}
