package store_test

import (
	"errors"
	"testing"

	"github.com/meshca/meshca/internal/store"
)

// TestContractHolderCerts: an agent node's current certificate per
// identity is listed by identity and by node, replaced, checked against
// its certificate, and forgotten, on every backend.
func TestContractHolderCerts(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		sub := s.Subscribe(0)
		defer sub.Close()
		certs := map[string]struct{ identity, node string }{
			"a1": {"web", "n1"}, "a2": {"web", "n2"}, "a3": {"webx", "n1"}, "a4": {"web", "n1"},
		}
		update(t, s, audited("setup", func(tx *store.Tx) error {
			for serial, c := range certs {
				cert := testCert(c.identity, serial, t0).Cert
				cert.Node = c.node
				if err := tx.PutCert(cert, nil); err != nil {
					return err
				}
			}
			for _, serial := range []string{"a1", "a2", "a3"} {
				c := certs[serial]
				cert := testCert(c.identity, serial, t0).Cert
				cert.Node = c.node
				if err := tx.PutHolderCert(cert, t0); err != nil {
					return err
				}
			}
			return nil
		}))
		// An agent node's certificate is its own kind of change: node
		// configuration, which follows KindCert, does not rebuild for it.
		announced := 0
		for _, c := range next(t, sub).Changes {
			switch c.Kind {
			case store.KindCert:
				t.Fatalf("agent node certificate %s announced as %s", c.Key, c.Kind)
			case store.KindAgentCert:
				announced++
			}
		}
		if announced != len(certs) {
			t.Fatalf("%d agent certificate changes, want %d", announced, len(certs))
		}
		serials := func(hs []store.HolderCert, err error) []string {
			t.Helper()
			if err != nil {
				t.Fatal(err)
			}
			var out []string
			for _, h := range hs {
				out = append(out, h.Node+"/"+h.Identity+"="+h.Serial)
			}
			return out
		}
		check := func(what string, got []string, want ...string) {
			t.Helper()
			if len(got) != len(want) {
				t.Fatalf("%s: %v, want %v", what, got, want)
			}
			for i := range got {
				if got[i] != want[i] {
					t.Fatalf("%s: %v, want %v", what, got, want)
				}
			}
		}
		view(t, s, func(tx *store.Tx) error {
			check("by identity web", serials(tx.HolderCertsOfIdentity("web")), "n1/web=a1", "n2/web=a2")
			check("by node n1", serials(tx.HolderCertsOfNode("n1")), "n1/web=a1", "n1/webx=a3")
			return nil
		})

		// A renewal replaces the pair's record; a certificate without a
		// node, or not stored, is refused.
		update(t, s, audited("renew", func(tx *store.Tx) error {
			c := testCert("web", "a4", t0).Cert
			c.Node = "n1"
			return tx.PutHolderCert(c, t0)
		}))
		err := s.Update(ctx, audited("no node", func(tx *store.Tx) error {
			return tx.PutHolderCert(testCert("web", "a2", t0).Cert, t0)
		}))
		if !errors.Is(err, store.ErrInvalid) {
			t.Fatalf("holder record for a certificate without a node: %v, want ErrInvalid", err)
		}
		err = s.Update(ctx, audited("not stored", func(tx *store.Tx) error {
			c := testCert("web", "zz", t0).Cert
			c.Node = "n1"
			return tx.PutHolderCert(c, t0)
		}))
		if !errors.Is(err, store.ErrNotFound) {
			t.Fatalf("holder record for a certificate not stored: %v, want ErrNotFound", err)
		}
		update(t, s, audited("unassign", func(tx *store.Tx) error { return tx.DeleteHolderCert("webx", "n1") }))
		view(t, s, func(tx *store.Tx) error {
			check("by identity web after renewal", serials(tx.HolderCertsOfIdentity("web")), "n1/web=a4", "n2/web=a2")
			check("by node n1 after unassign", serials(tx.HolderCertsOfNode("n1")), "n1/web=a4")
			if _, err := tx.HolderCert("webx", "n1"); !errors.Is(err, store.ErrNotFound) {
				t.Fatalf("deleted holder record: %v", err)
			}
			c, err := tx.Cert("a3")
			if err != nil || c.Node != "n1" {
				t.Fatalf("certificate of a forgotten holder record: %+v, %v", c, err)
			}
			return nil
		})
		// The CSR count of a node reads as zero until written.
		update(t, s, audited("count", func(tx *store.Tx) error {
			c, err := tx.SignCount("n1")
			if err != nil || c.Signs != 0 || c.Node != "n1" {
				t.Fatalf("unwritten count: %+v, %v", c, err)
			}
			c.WindowStart, c.Signs = t0, 3
			return tx.PutSignCount(c)
		}))
		view(t, s, func(tx *store.Tx) error {
			if c, err := tx.SignCount("n1"); err != nil || c.Signs != 3 || !c.WindowStart.Equal(t0) {
				t.Fatalf("count: %+v, %v", c, err)
			}
			check("by node n1 beside its count", serials(tx.HolderCertsOfNode("n1")), "n1/web=a4")
			return nil
		})
		if err := s.Check(ctx); err != nil {
			t.Fatalf("Check: %v", err)
		}
	})
}
