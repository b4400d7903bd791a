package store_test

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// pruneRetention is the certificate retention of the prune tests.
const pruneRetention = 7 * 24 * time.Hour

// expiredAt returns a certificate of identity that expires at notAfter.
func expiredAt(identity, serial string, notAfter time.Time) store.Credential {
	return testCert(identity, serial, notAfter.Add(-time.Hour))
}

// TestPruneExpiredCertificates fills a store (bbolt and etcd) with
// certificates on both sides of the retention and asks for one prune at
// t0: exactly the certificates that expired more than the retention ago
// and that nothing holds as current go, with their index entries and, for
// revoked ones, their revocation records; the current certificates of an
// identity, a node (in use and next) and an agent node stay however old,
// as do recently expired ones and revoked ones still on the CRL. One audit
// event counts what went; a second prune finds nothing and writes nothing.
func TestPruneExpiredCertificates(t *testing.T) {
	for _, name := range []string{"bbolt", "etcd"} {
		t.Run(name, func(t *testing.T) {
			var s *store.Store
			if name == "bbolt" {
				s = openCfg(t, config(t, filepath.Join(t.TempDir(), "data")))
			} else {
				s = openEtcd(t, etcdConfig(t, newPrefix(t)))
			}
			pruneExpired(t, s)
		})
	}
}

func pruneExpired(t *testing.T, s *store.Store) {
	// No compaction here: the package's etcd member serves other tests.
	cfg := store.PruneConfig{CertRetention: pruneRetention, RevisionRetention: 1000 * time.Hour}
	long := t0.Add(-pruneRetention - time.Minute) // expired beyond the retention
	recent := t0.Add(-pruneRetention + time.Minute)
	certs := map[string]store.Credential{
		// web's current certificate: kept, however old.
		"c-cur": expiredAt("web", "c-cur", long),
		"c-old": expiredAt("web", "c-old", long),
		// Expired, but within the retention.
		"c-recent": expiredAt("web", "c-recent", recent),
		// Revoked and unexpired: on the CRL.
		"c-live-revoked": expiredAt("web", "c-live-revoked", t0.Add(time.Hour)),
		"c-old-revoked":  expiredAt("web", "c-old-revoked", long),
		// Node n1's certificates: in use, next, and an old one.
		"n-cur":  expiredAt("node/n1", "n-cur", long),
		"n-next": expiredAt("node/n1", "n-next", long),
		"n-old":  expiredAt("node/n1", "n-old", long),
	}
	agent := func(serial string) store.Credential {
		c := expiredAt("api", serial, long)
		c.Node, c.Key, c.KeyHeld = "n2", nil, false
		return c
	}
	certs["a-cur"], certs["a-old"] = agent("a-cur"), agent("a-old")
	update(t, s, audited("fill", func(tx *store.Tx) error {
		for _, c := range certs {
			if err := putCert(tx, c); err != nil {
				return err
			}
		}
		if err := tx.PutIdentity(store.Identity{Name: "web", State: store.StateActive, CurrentSerial: "c-cur"}); err != nil {
			return err
		}
		if err := tx.PutIdentity(store.Identity{Name: "api", State: store.StateActive}); err != nil {
			return err
		}
		if err := tx.PutNode(store.Node{Name: "n1", Kind: "sidecar", State: store.StateActive, CertSerial: "n-cur", NextSerial: "n-next"}); err != nil {
			return err
		}
		if err := tx.PutNode(store.Node{Name: "n2", Kind: "sidecar", State: store.StateActive, Agent: true}); err != nil {
			return err
		}
		if err := tx.PutHolderCert(certs["a-cur"].Cert, t0); err != nil {
			return err
		}
		for _, serial := range []string{"c-live-revoked", "c-old-revoked"} {
			c := certs[serial]
			if err := tx.PutRevocation(store.Revocation{Serial: serial, Identity: c.Identity, IssuerSerial: c.IssuerSerial, NotAfter: c.NotAfter, RevokedAt: c.NotBefore}); err != nil {
				return err
			}
		}
		return nil
	}))
	check(t, s)

	got, err := s.Prune(ctx, t0, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("pruned: %+v", got)
	if got.Certs != 4 || got.Revocations != 1 || got.Compacted != 0 {
		t.Fatalf("prune = %+v, want 4 certificates and 1 revocation, no compaction", got)
	}
	gone := []string{"c-old", "c-old-revoked", "n-old", "a-old"}
	var lastSeq uint64
	view(t, s, func(tx *store.Tx) error {
		for serial := range certs {
			_, err := tx.Cert(serial)
			if slices.Contains(gone, serial) {
				if !errors.Is(err, store.ErrNotFound) {
					t.Errorf("certificate %s: %v, want it pruned", serial, err)
				}
			} else if err != nil {
				t.Errorf("certificate %s: %v, want it kept", serial, err)
			}
		}
		for identity, want := range map[string]string{"web": "c-cur c-recent c-live-revoked ", "node/n1": "n-cur n-next ", "api": "a-cur "} {
			list, err := tx.CertsFor(identity)
			if err != nil {
				return err
			}
			if got := sortedSerials(list); got != sortedSerials(certsOf(certs, want)) {
				t.Errorf("certificates of %s: %s, want %s", identity, got, want)
			}
		}
		if _, err := tx.Revocation("c-old-revoked"); !errors.Is(err, store.ErrNotFound) {
			t.Errorf("revocation of an expired certificate: %v, want it pruned", err)
		}
		if _, err := tx.Revocation("c-live-revoked"); err != nil {
			t.Errorf("revocation still on the CRL: %v", err)
		}
		evs, err := tx.Events(0, 0)
		if err != nil {
			return err
		}
		last := evs[len(evs)-1]
		if last.Action != store.ActionPrune || !strings.Contains(last.Detail, "certificates=4 revocations=1") {
			t.Errorf("last audit event %+v, want the prune with its counts", last)
		}
		lastSeq = tx.LastSeq()
		return nil
	})
	check(t, s)

	again, err := s.Prune(ctx, t0, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if again != (store.Pruned{}) {
		t.Fatalf("second prune = %+v, want nothing", again)
	}
	view(t, s, func(tx *store.Tx) error {
		if tx.LastSeq() != lastSeq {
			t.Errorf("a prune that removed nothing wrote to the audit log (seq %d -> %d)", lastSeq, tx.LastSeq())
		}
		return nil
	})
}

// certsOf returns the certificates named in the space-separated list.
func certsOf(certs map[string]store.Credential, list string) []store.Cert {
	var out []store.Cert
	for _, serial := range strings.Fields(list) {
		out = append(out, certs[serial].Cert)
	}
	return out
}

func sortedSerials(certs []store.Cert) string {
	var s []string
	for _, c := range certs {
		s = append(s, c.Serial)
	}
	slices.Sort(s)
	return strings.Join(s, " ")
}

// TestRunPruneOnTimer runs the prune loop on a fake clock: a certificate
// becomes prunable a retention after it expires, and the first run after
// that removes it, not one before.
func TestRunPruneOnTimer(t *testing.T) {
	clk := clock.NewFake(t0)
	s := openCfg(t, config(t, filepath.Join(t.TempDir(), "data")))
	// Expires at t0+1h: prunable after t0+25h.
	update(t, s, audited("fill", func(tx *store.Tx) error { return putCert(tx, expiredAt("web", "c1", t0.Add(time.Hour))) }))
	runCtx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- s.RunPrune(runCtx, store.PruneConfig{CertRetention: 24 * time.Hour, Interval: 12 * time.Hour, Clock: clk})
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunPrune: %v", err)
		}
	}()
	present := func() bool {
		var ok bool
		view(t, s, func(tx *store.Tx) error {
			_, err := tx.Cert("c1")
			ok = err == nil
			return nil
		})
		return ok
	}
	// A run has finished when the loop waits on the clock again.
	ran := func(n uint64) {
		t.Helper()
		wctx, stop := context.WithTimeout(ctx, 10*time.Second)
		defer stop()
		if err := clk.WaitForAfterCalls(wctx, n); err != nil {
			t.Fatalf("prune run %d: %v", n, err)
		}
	}
	// Runs at t0, then at t0+12h, +24h and +36h.
	ran(1)
	for i, want := range []bool{true, true, false} {
		clk.Add(12 * time.Hour)
		ran(uint64(i + 2))
		if got := present(); got != want {
			t.Fatalf("at t0+%dh: certificate present %v, want %v", 12*(i+1), got, want)
		}
	}
}

// TestPruneCompactsEtcd: each prune reads etcd's revision; a later prune
// compacts etcd's history to the newest revision read at least the
// revision retention ago (by the store's clock), and audits it. Reads at
// older revisions then fail as compacted, the store keeps working, and
// its feed goes on.
func TestPruneCompactsEtcd(t *testing.T) {
	// A member of its own: a compaction is cluster-wide.
	e := testkit.StartEtcd(t)
	clk := clock.NewFake(t0)
	s := openEtcd(t, store.EtcdConfig{
		Endpoints: []string{e.Endpoint}, Prefix: "/prune", Sealer: newSealer(t, 0x42), Clock: clk,
	})
	cfg := store.PruneConfig{RevisionRetention: 10 * time.Minute}
	cli := e.Client()
	sub := s.Subscribe(100)
	defer sub.Close()
	revNow := func() int64 {
		resp, err := cli.Get(ctx, "/prune/anything")
		if err != nil {
			t.Fatal(err)
		}
		return resp.Header.Revision
	}
	put := func(name string) {
		update(t, s, audited("fill", func(tx *store.Tx) error { return tx.PutIdentity(store.Identity{Name: name, State: store.StateActive}) }))
	}
	put("a")
	first := revNow()
	got, err := s.Prune(ctx, clk.Now(), cfg)
	if err != nil || got.Compacted != 0 {
		t.Fatalf("first prune = %+v, %v; want no compaction (nothing read 10 minutes ago)", got, err)
	}
	for i := range 5 {
		put(fmt.Sprint("b", i))
	}
	clk.Add(5 * time.Minute)
	if got, err := s.Prune(ctx, clk.Now(), cfg); err != nil || got.Compacted != 0 {
		t.Fatalf("prune 5 minutes later = %+v, %v; want no compaction yet", got, err)
	}
	clk.Add(5 * time.Minute)
	got, err = s.Prune(ctx, clk.Now(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if got.Compacted < first || got.Compacted >= revNow() {
		t.Fatalf("prune 10 minutes later compacted to %d, want the revision read by the first prune (>= %d, below now %d)", got.Compacted, first, revNow())
	}
	t.Logf("etcd compacted to revision %d (now %d)", got.Compacted, revNow())
	if _, err := cli.Get(ctx, "/prune/anything", clientv3.WithRev(got.Compacted-1)); !errors.Is(err, rpctypes.ErrCompacted) {
		t.Fatalf("read below the compacted revision: %v, want ErrCompacted", err)
	}
	put("after")
	check(t, s)
	view(t, s, func(tx *store.Tx) error {
		evs, err := tx.Events(0, 0)
		if err != nil {
			return err
		}
		var audited bool
		for _, ev := range evs {
			audited = audited || (ev.Action == store.ActionPrune && strings.Contains(ev.Detail, fmt.Sprintf("compacted_revision=%d", got.Compacted)))
		}
		if !audited {
			t.Errorf("no audit event of the compaction in %+v", evs)
		}
		return nil
	})
	// The feed delivers the write made after the compaction.
	wctx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	for {
		b, err := sub.Next(wctx)
		if err != nil {
			t.Fatalf("feed after compaction: %v", err)
		}
		if b.Resync || slices.ContainsFunc(b.Changes, func(c store.Change) bool { return c.Key == "after" }) {
			break
		}
	}
}
