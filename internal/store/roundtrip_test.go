package store_test

import (
	"reflect"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/store"
)

func TestIdentityRoundTrip(t *testing.T) {
	s, _ := newStore(t)
	web := store.Identity{
		Name: "web", SPIFFEID: "spiffe://mesh.local/web", DNSNames: []string{"web.local"},
		TTL: time.Hour, State: store.StateActive, CreatedAt: t0, UpdatedAt: t0,
	}
	api := store.Identity{Name: "api", SPIFFEID: "spiffe://mesh.local/api", TTL: time.Hour, Admin: true, State: store.StateActive}
	update(t, s, audited("identity.create", func(tx *store.Tx) error {
		if err := tx.InsertIdentity(web); err != nil {
			return err
		}
		return tx.InsertIdentity(api)
	}))

	err := s.Update(ctx, audited("identity.create", func(tx *store.Tx) error { return tx.InsertIdentity(web) }))
	wantErr(t, err, store.ErrExists)

	web.State = store.StateRevoked
	update(t, s, audited("identity.revoke", func(tx *store.Tx) error { return tx.PutIdentity(web) }))

	view(t, s, func(tx *store.Tx) error {
		got, err := tx.Identity("web")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, web) {
			t.Errorf("Identity(web) = %+v, want %+v", got, web)
		}
		_, err = tx.Identity("nope")
		wantErr(t, err, store.ErrNotFound)
		all, err := tx.Identities()
		if err != nil {
			t.Fatal(err)
		}
		if want := []store.Identity{api, web}; !reflect.DeepEqual(all, want) {
			t.Errorf("Identities() = %+v, want %+v", all, want)
		}
		return nil
	})
	check(t, s)
}

func TestCertRoundTrip(t *testing.T) {
	s, _ := newStore(t)
	// Inserted out of order: CertsFor must order by NotBefore, then serial.
	certs := []store.Credential{
		testCert("web", "03", t0.Add(2*time.Hour)),
		testCert("web", "02", t0),
		testCert("web", "01", t0),
		testCert("web", "00", t0.Add(-24*365*60*time.Hour)), // before 1970
		testCert("webx", "04", t0),                          // shares a name prefix
		testCert("we", "05", t0),
	}
	noKey := testCert("web", "06", t0.Add(time.Hour))
	noKey.Key, noKey.KeyHeld = nil, false // issued from a CSR
	certs = append(certs, noKey)

	update(t, s, audited("cert.issue", func(tx *store.Tx) error {
		for _, c := range certs {
			if err := putCert(tx, c); err != nil {
				return err
			}
		}
		return tx.PutIdentity(store.Identity{Name: "web", CurrentSerial: "03"})
	}))
	err := s.Update(ctx, audited("cert.issue", func(tx *store.Tx) error { return putCert(tx, certs[0]) }))
	wantErr(t, err, store.ErrExists)

	view(t, s, func(tx *store.Tx) error {
		for _, want := range certs {
			got, err := tx.Credential(want.Serial)
			if err != nil {
				t.Fatalf("Credential(%s): %v", want.Serial, err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Credential(%s) = %+v, want %+v", want.Serial, got, want)
			}
			cert, err := tx.Cert(want.Serial)
			if err != nil || !reflect.DeepEqual(cert, want.Cert) {
				t.Errorf("Cert(%s) = %+v, %v; want %+v", want.Serial, cert, err, want.Cert)
			}
		}
		_, err := tx.Cert("ff")
		wantErr(t, err, store.ErrNotFound)

		for _, tc := range []struct {
			identity, want string
		}{
			{"web", "00 01 02 06 03 "},
			{"webx", "04 "},
			{"we", "05 "},
			{"nobody", ""},
		} {
			got, err := tx.CertsFor(tc.identity)
			if err != nil {
				t.Fatal(err)
			}
			if serials(got) != tc.want {
				t.Errorf("CertsFor(%s) = %q, want %q", tc.identity, serials(got), tc.want)
			}
		}
		return nil
	})
	check(t, s)
}

func TestCARoundTrip(t *testing.T) {
	s, _ := newStore(t)
	root := store.CA{Serial: "r1", Role: store.RoleRoot, Source: store.SourceGenerated, DER: []byte("root"), Key: []byte("root key"), NotBefore: t0, NotAfter: t0.Add(time.Hour), CreatedAt: t0}
	inter := store.CA{Serial: "i1", Role: store.RoleIntermediate, Source: store.SourceImported, DER: []byte("inter"), NotBefore: t0, NotAfter: t0.Add(time.Hour)}
	set := store.CASet{IssuerSerial: "i1", RootSerials: []string{"r1"}}

	view(t, s, func(tx *store.Tx) error {
		_, err := tx.CASet()
		wantErr(t, err, store.ErrNotFound)
		return nil
	})
	err := s.Update(ctx, audited("ca.set", func(tx *store.Tx) error { return tx.SetCASet(set) }))
	wantErr(t, err, store.ErrNotFound)

	update(t, s, audited("ca.create", func(tx *store.Tx) error {
		if err := tx.PutCA(root); err != nil {
			return err
		}
		if err := tx.PutCA(inter); err != nil {
			return err
		}
		return tx.SetCASet(set)
	}))
	err = s.Update(ctx, audited("ca.set", func(tx *store.Tx) error {
		return tx.SetCASet(store.CASet{IssuerSerial: "i1", ChainSerials: []string{"missing"}, RootSerials: []string{"r1"}})
	}))
	wantErr(t, err, store.ErrNotFound)

	view(t, s, func(tx *store.Tx) error {
		for _, want := range []store.CA{root, inter} {
			got, err := tx.CA(want.Serial)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("CA(%s) = %+v, want %+v", want.Serial, got, want)
			}
		}
		_, err := tx.CA("x")
		wantErr(t, err, store.ErrNotFound)
		got, err := tx.CASet()
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, set) {
			t.Errorf("CASet() = %+v, want %+v", got, set)
		}
		return nil
	})
	check(t, s)
}

func TestNodeRoundTrip(t *testing.T) {
	s, _ := newStore(t)
	a := store.Node{Name: "a", Kind: "sidecar", Identities: []string{"web"}, JoinedAt: t0, State: store.StateActive, CreatedAt: t0}
	b := store.Node{Name: "b", Kind: "front", State: store.StateActive}
	update(t, s, audited("node.create", func(tx *store.Tx) error {
		if err := tx.PutNode(b); err != nil {
			return err
		}
		return tx.PutNode(a)
	}))
	view(t, s, func(tx *store.Tx) error {
		got, err := tx.Node("a")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, a) {
			t.Errorf("Node(a) = %+v, want %+v", got, a)
		}
		all, err := tx.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		if want := []store.Node{a, b}; !reflect.DeepEqual(all, want) {
			t.Errorf("Nodes() = %+v, want %+v", all, want)
		}
		return nil
	})

	update(t, s, audited("node.delete", func(tx *store.Tx) error { return tx.DeleteNode("a") }))
	err := s.Update(ctx, audited("node.delete", func(tx *store.Tx) error { return tx.DeleteNode("a") }))
	wantErr(t, err, store.ErrNotFound)
	view(t, s, func(tx *store.Tx) error {
		_, err := tx.Node("a")
		wantErr(t, err, store.ErrNotFound)
		all, err := tx.Nodes()
		if err != nil {
			t.Fatal(err)
		}
		if want := []store.Node{b}; !reflect.DeepEqual(all, want) {
			t.Errorf("Nodes() after delete = %+v, want %+v", all, want)
		}
		return nil
	})
	check(t, s)
}

func TestRevocationRoundTrip(t *testing.T) {
	s, _ := newStore(t)
	revs := []store.Revocation{
		{Serial: "0c", Identity: "web", Reason: "keyCompromise", NotAfter: t0.Add(time.Hour), RevokedAt: t0.Add(time.Minute)},
		{Serial: "0b", Identity: "web", NotAfter: t0.Add(time.Hour), RevokedAt: t0},
		{Serial: "0a", Identity: "api", NotAfter: t0.Add(time.Hour), RevokedAt: t0.Add(time.Minute)},
	}
	update(t, s, audited("cert.revoke", func(tx *store.Tx) error {
		for _, r := range revs {
			if err := tx.PutRevocation(r); err != nil {
				return err
			}
		}
		return nil
	}))
	view(t, s, func(tx *store.Tx) error {
		got, err := tx.Revocation("0c")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, revs[0]) {
			t.Errorf("Revocation(0c) = %+v, want %+v", got, revs[0])
		}
		_, err = tx.Revocation("ff")
		wantErr(t, err, store.ErrNotFound)
		all, err := tx.Revocations()
		if err != nil {
			t.Fatal(err)
		}
		if want := []store.Revocation{revs[1], revs[2], revs[0]}; !reflect.DeepEqual(all, want) {
			t.Errorf("Revocations() = %+v, want %+v", all, want)
		}
		return nil
	})
	check(t, s)
}

func TestMeshVersions(t *testing.T) {
	s, _ := newStore(t)
	view(t, s, func(tx *store.Tx) error {
		_, err := tx.LatestMesh()
		wantErr(t, err, store.ErrNotFound)
		return nil
	})
	docs := []string{"v1: {}", "v2: {}", "v3: {}"}
	for i, doc := range docs {
		var m store.Mesh
		update(t, s, audited("mesh.apply", func(tx *store.Tx) error {
			var err error
			m, err = tx.AppendMesh([]byte(doc), "alice")
			return err
		}))
		if want := (store.Mesh{Version: uint64(i + 1), Document: []byte(doc), AppliedBy: "alice", AppliedAt: t0}); !reflect.DeepEqual(m, want) {
			t.Errorf("AppendMesh #%d = %+v, want %+v", i+1, m, want)
		}
	}
	view(t, s, func(tx *store.Tx) error {
		latest, err := tx.LatestMesh()
		if err != nil {
			t.Fatal(err)
		}
		if latest.Version != 3 || string(latest.Document) != docs[2] {
			t.Errorf("LatestMesh() = %d %q, want 3 %q", latest.Version, latest.Document, docs[2])
		}
		v2, err := tx.Mesh(2)
		if err != nil {
			t.Fatal(err)
		}
		if string(v2.Document) != docs[1] {
			t.Errorf("Mesh(2) = %q, want %q", v2.Document, docs[1])
		}
		_, err = tx.Mesh(4)
		wantErr(t, err, store.ErrNotFound)
		hist, err := tx.MeshHistory()
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != 3 {
			t.Fatalf("MeshHistory() has %d versions, want 3", len(hist))
		}
		for i, m := range hist {
			if m.Version != uint64(i+1) || string(m.Document) != docs[i] {
				t.Errorf("MeshHistory()[%d] = %d %q", i, m.Version, m.Document)
			}
		}
		return nil
	})
	check(t, s)
}

func TestInvalidRecords(t *testing.T) {
	s, _ := newStore(t)
	tests := []struct {
		name string
		fn   func(*store.Tx) error
	}{
		{"empty identity", func(tx *store.Tx) error { return tx.PutIdentity(store.Identity{}) }},
		{"NUL in identity", func(tx *store.Tx) error { return tx.InsertIdentity(store.Identity{Name: "a\x00b"}) }},
		{"cert without serial", func(tx *store.Tx) error { return putCert(tx, testCert("web", "", t0)) }},
		{"cert without identity", func(tx *store.Tx) error { return putCert(tx, testCert("", "01", t0)) }},
		{"CA without serial", func(tx *store.Tx) error { return tx.PutCA(store.CA{}) }},
		{"node without name", func(tx *store.Tx) error { return tx.PutNode(store.Node{}) }},
		{"revocation without serial", func(tx *store.Tx) error { return tx.PutRevocation(store.Revocation{}) }},
		{"event without action", func(tx *store.Tx) error { _, err := tx.Append(store.Event{}); return err }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			wantErr(t, s.Update(ctx, audited("x", tc.fn)), store.ErrInvalid)
		})
	}
	view(t, s, func(tx *store.Tx) error {
		if n := tx.LastSeq(); n != 0 {
			t.Errorf("LastSeq() = %d after only failed updates, want 0", n)
		}
		return nil
	})
	check(t, s)
}
