package app_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// write is one write made through a replica's admin API, as its client
// saw it.
type write struct {
	replica    string
	action     string // registry.ActionIdentityAdd, ActionIdentityRevoke or ActionMeshApply
	key        string // the identity; for a mesh apply, the version acknowledged
	serial     string // an add's certificate
	version    uint64 // a mesh apply's version
	start, end time.Time
	status     int
	acked      bool
	seq        uint64 // the audit Seq of its record, found afterwards
}

// TestConcurrentWritesThroughTwoReplicas runs two replicas on one etcd and
// writes through both at once: from each, two clients add identities,
// revoke one of those they added and apply a mesh document, and on three
// names both replicas add the same identity at the same moment. Then the
// acknowledged history is checked:
//
//   - no duplicate: on each contested name exactly one replica succeeded
//     and the other was told it exists; no serial or mesh version was
//     acknowledged twice;
//   - no lost or extra audit record: each acknowledged write has exactly
//     its records (an add its identity.add and cert.issue, a revocation
//     its identity.revoke, an apply its mesh.apply with its version);
//   - every acknowledged write is visible through both replicas;
//   - the order is consistent with real time: when one acknowledged write
//     ended before another began, its audit record comes first (and so
//     does its mesh version), a linearizability-style check of the
//     acknowledged history against the audit log's sequence.
func TestConcurrentWritesThroughTwoReplicas(t *testing.T) {
	e := testkit.StartEtcd(t)
	const prefix = "/history"
	onEtcd := onEtcdAt([]string{e.Endpoint}, prefix)
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	a := startMeshIn(t, nil, dirA, onEtcd)
	copyKEK(t, dirA, dirB)
	b := startMeshIn(t, nil, dirB, onEtcd)
	replicas := map[string]*mesh{"A": a, "B": b}

	client := &http.Client{Timeout: 30 * time.Second}
	var (
		mu     sync.Mutex
		writes []*write
		port   atomic.Int32
	)
	port.Store(20000)
	do := func(w *write, method, path string, body any, want int) {
		w.start = time.Now()
		status, data, err := call(client, replicas[w.replica], method, path, body)
		w.end, w.status = time.Now(), status
		if err == nil && status == want {
			switch w.action {
			case registry.ActionIdentityAdd:
				var id api.Identity
				w.acked = json.Unmarshal(data, &id) == nil && id.Cert != nil
				if w.acked {
					w.serial = id.Cert.Serial
				}
			case registry.ActionMeshApply:
				var plan api.MeshPlan
				w.acked = json.Unmarshal(data, &plan) == nil && plan.Version > 0 && !plan.Unchanged
				w.version = plan.Version
			default:
				w.acked = true
			}
		}
		mu.Lock()
		writes = append(writes, w)
		mu.Unlock()
	}

	var wg sync.WaitGroup
	for _, r := range []string{"A", "B"} {
		for c := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var added []string
				for j := range 6 {
					w := &write{replica: r}
					switch j % 4 {
					case 0, 1:
						w.action, w.key = registry.ActionIdentityAdd, fmt.Sprintf("%s%d-%d", strings.ToLower(r), c, j)
						do(w, "POST", api.PathIdentities, api.AddIdentityRequest{Name: w.key, TTL: "1h"}, http.StatusCreated)
						if w.acked {
							added = append(added, w.key)
						}
					case 2:
						if len(added) == 0 {
							continue
						}
						w.action, w.key = registry.ActionIdentityRevoke, added[0]
						added = added[1:]
						do(w, "POST", api.PathRevoke+"/"+w.key, api.RevokeRequest{Reason: "test"}, http.StatusOK)
					case 3:
						// Every document differs (a port of its own), so
						// every apply makes a version.
						p := int(port.Add(1))
						w.action = registry.ActionMeshApply
						do(w, "POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(map[string][]int{"echo-a": {p}, "echo-b": {p}}, 50, 50)}, http.StatusCreated)
					}
				}
			}()
		}
	}
	// Contested names: both replicas add each at the same moment.
	contested := []string{"both-0", "both-1", "both-2"}
	for _, name := range contested {
		gate := make(chan struct{})
		for _, r := range []string{"A", "B"} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				do(&write{replica: r, action: registry.ActionIdentityAdd, key: name}, "POST", api.PathIdentities, api.AddIdentityRequest{Name: name, TTL: "1h"}, http.StatusCreated)
			}()
		}
		close(gate)
	}
	wg.Wait()

	// Contested names: one winner, one told it exists.
	for _, name := range contested {
		var won, exists int
		for _, w := range writes {
			if w.key == name {
				switch {
				case w.acked:
					won++
				case w.status == http.StatusConflict:
					exists++
				}
			}
		}
		if won != 1 || exists != 1 {
			t.Errorf("identity %s added at once through both replicas: %d succeeded, %d told it exists; want 1 and 1", name, won, exists)
		}
	}
	var acked []*write
	counts := map[string]int{}
	serials, versions := map[string]bool{}, map[uint64]bool{}
	for _, w := range writes {
		if !w.acked {
			if w.status != http.StatusConflict {
				t.Errorf("%s %s through %s failed: %d", w.action, w.key, w.replica, w.status)
			}
			continue
		}
		acked = append(acked, w)
		counts[w.action]++
		if w.serial != "" {
			if serials[w.serial] {
				t.Errorf("serial %s acknowledged twice", w.serial)
			}
			serials[w.serial] = true
		}
		if w.version > 0 {
			if versions[w.version] {
				t.Errorf("mesh version %d acknowledged twice", w.version)
			}
			versions[w.version] = true
		}
	}

	// The audit log: exactly the records of each acknowledged write.
	st := storeOf(t, a, []string{e.Endpoint}, prefix)
	if err := st.Check(t.Context()); err != nil {
		t.Fatalf("store check: %v", err)
	}
	var events []store.Event
	if err := st.View(t.Context(), func(tx *store.Tx) error {
		var err error
		events, err = tx.Events(0, 0)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	recordsOf := func(w *write) (main []store.Event, issues int) {
		for _, ev := range events {
			if ev.Outcome != store.OutcomeOK {
				continue
			}
			switch {
			case ev.Action == registry.ActionMeshApply && w.action == ev.Action:
				if strings.HasPrefix(ev.Detail, fmt.Sprintf("version=%d ", w.version)) {
					main = append(main, ev)
				}
			case ev.Action == w.action && ev.Identity == w.key:
				main = append(main, ev)
			case ev.Action == registry.ActionCertIssue && w.action == registry.ActionIdentityAdd && ev.Serial == w.serial:
				issues++
			}
		}
		return main, issues
	}
	for _, w := range acked {
		main, issues := recordsOf(w)
		if len(main) != 1 {
			t.Errorf("acknowledged %s %s (version %d) through %s: %d audit records, want 1: %+v", w.action, w.key, w.version, w.replica, len(main), main)
			continue
		}
		w.seq = main[0].Seq
		if w.action == registry.ActionIdentityAdd && (main[0].Serial != w.serial || issues != 1) {
			t.Errorf("acknowledged add of %s with serial %s: audit says serial %s, %d cert.issue records", w.key, w.serial, main[0].Serial, issues)
		}
	}

	// Every acknowledged write, through both replicas.
	for name, m := range replicas {
		var ids []api.Identity
		m.admin("GET", api.PathIdentities, nil, &ids, http.StatusOK)
		byName := map[string]api.Identity{}
		for _, id := range ids {
			byName[id.Name] = id
		}
		var hist []api.MeshVersion
		m.admin("GET", api.PathMeshHist, nil, &hist, http.StatusOK)
		inHistory := map[uint64]bool{}
		for _, v := range hist {
			inHistory[v.Version] = true
		}
		for _, w := range acked {
			id, ok := byName[w.key]
			switch w.action {
			case registry.ActionIdentityAdd:
				if !ok || id.Cert == nil || id.Cert.Serial != w.serial {
					t.Errorf("replica %s: identity %s added through %s with serial %s: %+v (found %v)", name, w.key, w.replica, w.serial, id, ok)
				}
			case registry.ActionIdentityRevoke:
				if !ok || id.State != store.StateRevoked {
					t.Errorf("replica %s: identity %s revoked through %s is %q", name, w.key, w.replica, id.State)
				}
			case registry.ActionMeshApply:
				if !inHistory[w.version] {
					t.Errorf("replica %s: mesh version %d applied through %s is not in its history", name, w.version, w.replica)
				}
			}
		}
	}

	// Real-time order against the audit sequence.
	var pairs, crossReplica int
	for _, x := range acked {
		for _, y := range acked {
			if x.seq == 0 || y.seq == 0 || !x.end.Before(y.start) {
				continue
			}
			pairs++
			if x.replica != y.replica {
				crossReplica++
			}
			if x.seq >= y.seq {
				t.Errorf("%s %s through %s ended before %s %s through %s began, but its audit record %d is not before %d",
					x.action, x.key, x.replica, y.action, y.key, y.replica, x.seq, y.seq)
			}
			if x.version > 0 && y.version > 0 && x.version >= y.version {
				t.Errorf("mesh version %d was acknowledged before version %d was applied", x.version, y.version)
			}
		}
	}
	t.Logf("two replicas, 4 clients plus 3 contested names: %d writes, %d acknowledged (%d adds, %d revocations, %d mesh applies), %d contested adds refused as existing; every acknowledged write has exactly its audit records (%d events in all) and is visible through both replicas; %d pairs of non-overlapping acknowledged writes (%d across replicas) all in audit order",
		len(writes), len(acked), counts[registry.ActionIdentityAdd], counts[registry.ActionIdentityRevoke], counts[registry.ActionMeshApply], len(writes)-len(acked), len(events), pairs, crossReplica)
}
