package store_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// TestCRLRecord: no CRL before the first one is stored; the stored one
// reads back whole, survives a reopen, replaces the one before, and is
// written only in an audited Update.
func TestCRLRecord(t *testing.T) {
	s, dir := newStore(t)
	view(t, s, func(tx *store.Tx) error {
		_, err := tx.CRL()
		wantErr(t, err, store.ErrNotFound)
		return nil
	})
	now := time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)
	crl := store.CRL{Number: 7, PEM: []byte("-----BEGIN X509 CRL-----\n"), Issuers: []string{"a1", "b2"}, Entries: 3, Covers: "c0ffee",
		ThisUpdate: now, NextUpdate: now.Add(24 * time.Hour)}
	update(t, s, audited("crl.issue", func(tx *store.Tx) error { return tx.PutCRL(crl) }))
	err := s.Update(context.Background(), func(tx *store.Tx) error { return tx.PutCRL(store.CRL{Number: 8}) })
	wantErr(t, err, store.ErrNoAudit)
	if err := s.View(context.Background(), func(tx *store.Tx) error { return tx.PutCRL(store.CRL{Number: 9}) }); err == nil {
		t.Fatal("PutCRL wrote in a View")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openCfg(t, config(t, dir))
	view(t, s, func(tx *store.Tx) error {
		got, err := tx.CRL()
		if err != nil {
			return err
		}
		if got.Number != 7 || !bytes.Equal(got.PEM, crl.PEM) || len(got.Issuers) != 2 || got.Entries != 3 || got.Covers != "c0ffee" ||
			!got.ThisUpdate.Equal(now) || !got.NextUpdate.Equal(crl.NextUpdate) {
			t.Fatalf("read back %+v, want %+v", got, crl)
		}
		return nil
	})
	update(t, s, audited("crl.issue", func(tx *store.Tx) error { return tx.PutCRL(store.CRL{Number: 10, ThisUpdate: now}) }))
	view(t, s, func(tx *store.Tx) error {
		if got, err := tx.CRL(); err != nil || got.Number != 10 || got.PEM != nil {
			t.Fatalf("after a withdrawal: %+v %v", got, err)
		}
		return nil
	})
	check(t, s)
}
