package store_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshca/meshca/internal/store"
)

// etcdKVRequests is how many KV requests (Range and Txn, each one round
// trip) the embedded etcd member of this process has been sent, by etcd's
// own gRPC counter.
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
			var service, method string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "grpc_service":
					service = l.GetValue()
				case "grpc_method":
					method = l.GetValue()
				}
			}
			if service == "etcdserverpb.KV" && (method == "Range" || method == "Txn") {
				n += m.GetCounter().GetValue()
			}
		}
	}
	return n
}

// TestContractPrefetch: reads after Prefetch answer what they would have
// without it (records present, missing, written in the transaction), on
// etcd in one round trip.
func TestContractPrefetch(t *testing.T) {
	contract(t, func(t *testing.T, b backend, open func(*testing.T) *store.Store) {
		s := open(t)
		cert := testCert("node/n1", "0a", t0)
		rev := store.Revocation{Serial: "0b", Identity: "node/n1", IssuerSerial: "ca1", Reason: "superseded", NotAfter: t0.Add(time.Hour), RevokedAt: t0}
		update(t, s, audited("setup", func(tx *store.Tx) error {
			if err := tx.PutCA(store.CA{Serial: "ca1", Role: store.RoleRoot, Source: store.SourceGenerated, DER: []byte("root"), Key: []byte("root key"), NotBefore: t0, NotAfter: t0.Add(time.Hour)}); err != nil {
				return err
			}
			if err := tx.SetCASet(store.CASet{IssuerSerial: "ca1", RootSerials: []string{"ca1"}}); err != nil {
				return err
			}
			if err := tx.PutNode(store.Node{Name: "n1", State: store.StateActive, CertSerial: "0a"}); err != nil {
				return err
			}
			if err := putCert(tx, cert); err != nil {
				return err
			}
			return tx.PutRevocation(rev)
		}))

		before := etcdKVRequests(t)
		view(t, s, func(tx *store.Tx) error {
			if err := tx.Prefetch(store.NodeKey("n1"), store.NodeKey("n9"), store.CertKey("0a"), store.RevocationKey("0a"),
				store.RevocationKey("0b"), store.CASetKey(), store.NodeKey("n1")); err != nil {
				return err
			}
			if n, err := tx.Node("n1"); err != nil || n.CertSerial != "0a" || n.State != store.StateActive {
				t.Errorf("Node(n1) = %+v, %v", n, err)
			}
			if _, err := tx.Node("n9"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Node(n9), prefetched and missing: %v, want ErrNotFound", err)
			}
			if c, err := tx.Cert("0a"); err != nil || string(c.DER) != "der-0a" || !c.KeyHeld {
				t.Errorf("Cert(0a) = %+v, %v", c, err)
			}
			if _, err := tx.Revocation("0a"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Revocation(0a): %v, want ErrNotFound", err)
			}
			if r, err := tx.Revocation("0b"); err != nil || r.Reason != "superseded" {
				t.Errorf("Revocation(0b) = %+v, %v", r, err)
			}
			if set, err := tx.CASet(); err != nil || set.IssuerSerial != "ca1" {
				t.Errorf("CASet = %+v, %v", set, err)
			}
			return nil
		})
		if b.name == "etcd" {
			got := etcdKVRequests(t) - before
			t.Logf("etcd: Prefetch of 6 records and the 6 reads of them: %.0f etcd round trip(s)", got)
			if got != 1 {
				t.Errorf("Prefetch and reads of what it read: %.0f etcd requests, want 1", got)
			}
		}

		// An Update's own writes win over what it prefetched.
		update(t, s, audited("node.update", func(tx *store.Tx) error {
			if err := tx.Prefetch(store.NodeKey("n1"), store.NodeKey("n2")); err != nil {
				return err
			}
			if err := tx.PutNode(store.Node{Name: "n2", State: store.StateActive}); err != nil {
				return err
			}
			if err := tx.DeleteNode("n1"); err != nil {
				return err
			}
			if _, err := tx.Node("n1"); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("Node(n1) after its delete in the same Update: %v, want ErrNotFound", err)
			}
			if n, err := tx.Node("n2"); err != nil || n.Name != "n2" {
				t.Errorf("Node(n2) after its put in the same Update: %+v, %v", n, err)
			}
			return nil
		}))

		check(t, s)
	})
}

// TestEtcdPrefetchConflict: an Update whose prefetched record another
// writer changed before the Update committed runs again, on the change.
func TestEtcdPrefetchConflict(t *testing.T) {
	prefix := newPrefix(t)
	s := openEtcd(t, etcdConfig(t, prefix))
	update(t, s, audited("setup", func(tx *store.Tx) error {
		return tx.PutNode(store.Node{Name: "n2", State: store.StateActive})
	}))
	runs := 0
	update(t, s, audited("node.touch", func(tx *store.Tx) error {
		runs++
		if err := tx.Prefetch(store.NodeKey("n2")); err != nil {
			return err
		}
		n, err := tx.Node("n2")
		if err != nil {
			return err
		}
		if runs == 1 {
			// Another writer changes the record, and only it (no audit
			// record, nothing else this Update reads).
			changed, err := json.Marshal(store.Node{Name: "n2", State: store.StateRevoked})
			if err != nil {
				return err
			}
			if _, err := etcdClient(t).Put(ctx, prefix+"/b/nodes/n2", string(changed)); err != nil {
				return err
			}
		}
		if runs > 1 && n.State != store.StateRevoked {
			t.Errorf("run %d read node n2 as %s, want the other writer's revoked", runs, n.State)
		}
		n.Kind = "touched"
		return tx.PutNode(n)
	}))
	if runs != 2 {
		t.Errorf("an Update whose prefetched record changed before its commit ran %d times, want 2", runs)
	}
	view(t, s, func(tx *store.Tx) error {
		if n, err := tx.Node("n2"); err != nil || n.State != store.StateRevoked || n.Kind != "touched" {
			t.Errorf("node n2 = %+v, %v: want revoked and touched (the change kept, the Update run again on it)", n, err)
		}
		return nil
	})
}
