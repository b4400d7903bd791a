package app_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// These tests run meshca on a three-member embedded etcd cluster and stop
// members under it. The members skip fsync (see testkit.EtcdCluster): an
// acknowledged write is checked against what a quorum of members holds,
// which is what losing one or two members puts to the test, not against a
// power cut of the whole cluster.

// onEtcdAt configures meshca on the etcd endpoints under prefix.
func onEtcdAt(endpoints []string, prefix string) func(*config.Config) {
	return func(c *config.Config) {
		c.Store.Etcd = config.Etcd{Endpoints: endpoints, Prefix: prefix}
	}
}

// storeOf opens the store meshca m keeps in etcd, with m's key-encryption
// key, to read it behind meshca's back; closed when the test ends.
func storeOf(t *testing.T, m *mesh, endpoints []string, prefix string) *store.Store {
	t.Helper()
	sealer, err := seal.LoadOrCreate(filepath.Join(m.dir, app.KEKFile))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.OpenEtcd(store.EtcdConfig{Endpoints: endpoints, Prefix: prefix, Sealer: sealer, DialTimeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// call makes one admin API request and returns the status and body; it
// never fails the test, so that load goroutines can use it.
func call(client *http.Client, m *mesh, method, path string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, "http://"+m.app.Admin+path, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	return resp.StatusCode, data, err
}

// issued is a write meshca acknowledged: a certificate it said it issued.
type issued struct {
	action   string // registry.ActionIdentityAdd or registry.ActionCertReissue
	identity string
	serial   string
	at       time.Time
}

// issuanceLoad adds identities and re-issues them from several goroutines
// until stop is closed, and collects what meshca acknowledged.
type issuanceLoad struct {
	mu       sync.Mutex
	acks     []issued
	failures []string
	wg       sync.WaitGroup
	acked    chan struct{} // one send per acknowledgement, never blocking
}

func startIssuanceLoad(m *mesh, workers int, stop <-chan struct{}) *issuanceLoad {
	l := &issuanceLoad{acked: make(chan struct{}, 1<<16)}
	// Long enough for etcd to elect a new leader; a hang shows as a
	// failure.
	client := &http.Client{Timeout: 20 * time.Second}
	for w := range workers {
		l.wg.Add(1)
		go func() {
			defer l.wg.Done()
			var mine []string
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				a := issued{action: registry.ActionIdentityAdd, identity: fmt.Sprintf("w%d-%d", w, i)}
				status, body, err := 0, []byte(nil), error(nil)
				want := http.StatusCreated
				if i%3 == 2 && len(mine) > 0 { // every third operation re-issues
					a = issued{action: registry.ActionCertReissue, identity: mine[i%len(mine)]}
					want = http.StatusOK
					status, body, err = call(client, m, "POST", api.PathReissue+"/"+a.identity, struct{}{})
				} else {
					status, body, err = call(client, m, "POST", api.PathIdentities, api.AddIdentityRequest{Name: a.identity, TTL: "1h"})
				}
				var id api.Identity
				if err == nil && status == want && json.Unmarshal(body, &id) == nil && id.Cert != nil {
					a.serial, a.at = id.Cert.Serial, time.Now()
					if a.action == registry.ActionIdentityAdd {
						mine = append(mine, a.identity)
					}
					l.mu.Lock()
					l.acks = append(l.acks, a)
					l.mu.Unlock()
					l.acked <- struct{}{}
					continue
				}
				l.mu.Lock()
				l.failures = append(l.failures, fmt.Sprintf("%s %s: %d %v %.200s", a.action, a.identity, status, err, body))
				l.mu.Unlock()
				// A refusal comes back at once: pace the next try.
				select {
				case <-stop:
					return
				case <-time.After(50 * time.Millisecond):
				}
			}
		}()
	}
	return l
}

// await waits for n more acknowledgements, at most within d; it returns
// how many came.
func (l *issuanceLoad) await(n int, d time.Duration) int {
	deadline := time.After(d)
	for got := 0; got < n; got++ {
		select {
		case <-l.acked:
		case <-deadline:
			return got
		}
	}
	return n
}

// checkAcknowledged verifies that every acknowledged issuance is in st:
// the certificate of its identity, and exactly one audit record of the
// action that acknowledged it with its serial. It returns the number of
// audit events read.
func checkAcknowledged(t *testing.T, st *store.Store, acks []issued) int {
	t.Helper()
	var n int
	err := st.View(context.Background(), func(tx *store.Tx) error {
		evs, err := tx.Events(0, 0)
		if err != nil {
			return err
		}
		n = len(evs)
		records := map[string]int{} // action + serial -> audit records
		for _, ev := range evs {
			if ev.Outcome == store.OutcomeOK {
				records[ev.Action+" "+ev.Serial]++
			}
		}
		for _, a := range acks {
			c, err := tx.Cert(a.serial)
			if err != nil {
				t.Errorf("acknowledged %s of %s: certificate %s: %v", a.action, a.identity, a.serial, err)
				continue
			}
			if c.Identity != a.identity {
				t.Errorf("certificate %s belongs to %q, acknowledged for %q", a.serial, c.Identity, a.identity)
			}
			if _, err := tx.Identity(a.identity); err != nil {
				t.Errorf("acknowledged %s: identity %s: %v", a.action, a.identity, err)
			}
			if got := records[a.action+" "+a.serial]; got != 1 {
				t.Errorf("acknowledged %s of %s (serial %s): %d audit records, want 1", a.action, a.identity, a.serial, got)
			}
			if a.action == registry.ActionIdentityAdd && records[registry.ActionCertIssue+" "+a.serial] != 1 {
				t.Errorf("acknowledged add of %s: %d %s records for serial %s, want 1", a.identity, records[registry.ActionCertIssue+" "+a.serial], registry.ActionCertIssue, a.serial)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// checkWhole verifies that nothing in st is half-written: the store's own
// check (every identity's current certificate exists and is indexed,
// audit gapless, every sealed key opens), and every identity has the
// audit record of its addition with the serial it was first issued.
func checkWhole(t *testing.T, st *store.Store) int {
	t.Helper()
	if err := st.Check(context.Background()); err != nil {
		t.Fatalf("store check: %v", err)
	}
	var n int
	err := st.View(context.Background(), func(tx *store.Tx) error {
		ids, err := tx.Identities()
		if err != nil {
			return err
		}
		evs, err := tx.Events(0, 0)
		if err != nil {
			return err
		}
		added := map[string]string{}
		for _, ev := range evs {
			if ev.Action == registry.ActionIdentityAdd && ev.Outcome == store.OutcomeOK {
				added[ev.Identity] = ev.Serial
			}
		}
		for _, id := range ids {
			serial, ok := added[id.Name]
			if !ok {
				t.Errorf("identity %s is stored without the audit record of its addition", id.Name)
				continue
			}
			if _, err := tx.Cert(serial); err != nil {
				t.Errorf("identity %s: the certificate its addition recorded, %s: %v", id.Name, serial, err)
			}
		}
		n = len(ids)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// etcdLeader returns the index of the member that leads the cluster.
func etcdLeader(t *testing.T, c *testkit.EtcdCluster) int {
	t.Helper()
	cli := c.Client()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range c.Size() {
		st, err := cli.Status(ctx, c.Member(i).Endpoint)
		if err != nil {
			t.Fatalf("status of etcd member %d: %v", i, err)
		}
		if st.Leader == st.Header.MemberId {
			return i
		}
	}
	t.Fatal("no etcd member leads")
	return -1
}

// TestEtcdMembersStopped runs meshca (contact bound 3s) on a three-member
// etcd cluster and takes the members away one by one:
//
//   - One of three, the leading one, while four clients add and re-issue
//     identities through the admin API as fast as it answers: meshca goes
//     on acknowledging writes, and every write it acknowledged, before,
//     during or after the stop, is in etcd afterwards: the identity, its
//     certificate, and exactly one audit record of it.
//   - Two of three: every write gets an answer (no hang); from the contact
//     bound on each is refused at once with a 503 that says etcd does not
//     answer, and /readyz is 503.
//   - One member back: writes are acknowledged again and the replica is
//     ready. Nothing is half-written: the store's check passes and every
//     stored identity has the certificate and the audit record of its
//     addition.
func TestEtcdMembersStopped(t *testing.T) {
	const every, bound = 200 * time.Millisecond, 3 * time.Second
	began := time.Now()
	cluster := testkit.StartEtcdCluster(t, 3)
	clusterUp := time.Since(began)
	const prefix = "/members"
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), onEtcdAt(cluster.Endpoints(), prefix), app.WithStoreContact(every, bound))
	t.Logf("a cluster of 3 members ready in %s, meshca started on it %s later", clusterUp.Round(time.Millisecond), (time.Since(began) - clusterUp).Round(time.Millisecond))

	// One member of three, under load.
	stop := make(chan struct{})
	load := startIssuanceLoad(m, 4, stop)
	var once sync.Once
	halt := func() { once.Do(func() { close(stop); load.wg.Wait() }) }
	defer halt()
	const before, after = 4, 8
	if got := load.await(before, 30*time.Second); got < before {
		halt()
		t.Fatalf("only %d acknowledged writes in 30s before any member stopped: %v", got, load.failures)
	}
	first := etcdLeader(t, cluster)
	load.mu.Lock()
	ackedBefore, failedBefore := len(load.acks), len(load.failures)
	load.mu.Unlock()
	stopping := time.Now()
	cluster.Stop(first)
	stopped := time.Now()
	// Drain what came during the stop; then count from the stop on.
	for len(load.acked) > 0 {
		<-load.acked
	}
	if got := load.await(after, 20*time.Second); got < after {
		halt()
		t.Fatalf("only %d writes acknowledged within 20s after the etcd leader stopped: %v", got, load.failures[failedBefore:])
	}
	halt()
	load.mu.Lock()
	acks, failures := load.acks, load.failures
	load.mu.Unlock()
	// The longest time without an acknowledgement from the stop on, and
	// how many came while the member was stopping and after.
	var during, afterStop int
	var gap time.Duration
	last := stopping
	for _, a := range acks[ackedBefore:] {
		if a.at.Before(stopped) {
			during++
		} else {
			afterStop++
		}
		gap = max(gap, a.at.Sub(last))
		last = a.at
	}
	var left []string // the endpoints of the members still running
	for i, ep := range cluster.Endpoints() {
		if i != first {
			left = append(left, ep)
		}
	}
	st := storeOf(t, m, left, prefix)
	events := checkAcknowledged(t, st, acks)
	t.Logf("etcd leader (member %d of 3) stopped under load (4 clients; the stop took %s): %d writes acknowledged before it, %d while it stopped, %d after; longest time without an acknowledgement from the stop on %s; %d writes failed; all %d acknowledged writes in etcd with their certificate and one audit record each (%d audit events)",
		first, stopped.Sub(stopping).Round(time.Millisecond), ackedBefore, during, afterStop, gap.Round(time.Millisecond), len(failures)-failedBefore, len(acks), events)
	for _, f := range failures {
		t.Logf("failed: %s", f)
	}

	// Two of three: the quorum is lost once the second member is down.
	second := (first + 1) % 3
	client := &http.Client{Timeout: 60 * time.Second}
	ready := func() (bool, string) {
		status, body, err := call(client, m, "GET", "/readyz", nil)
		if err != nil {
			return false, err.Error()
		}
		return status == http.StatusOK, string(body)
	}
	stopDone := make(chan time.Duration, 1)
	stopping = time.Now()
	go func() {
		cluster.Stop(second)
		stopDone <- time.Since(stopping)
	}()
	// Writes until one is refused with the clear answer; each must end.
	var (
		firstFail, clean, slowest time.Duration
		answer                    api.Error
		attempts                  []string
	)
	for i := 0; clean == 0; i++ {
		if time.Since(stopping) > 30*time.Second {
			t.Fatalf("no clear refusal 30s after the quorum was lost: %v", attempts)
		}
		start := time.Now()
		name := fmt.Sprint("during-", i)
		status, body, err := call(client, m, "POST", api.PathIdentities, api.AddIdentityRequest{Name: name, TTL: "1h"})
		took := time.Since(start)
		slowest = max(slowest, took)
		attempts = append(attempts, fmt.Sprintf("%d after %s: %v %.160s", status, took.Round(time.Millisecond), err, body))
		if err != nil {
			t.Fatalf("write without a quorum: no answer after %s: %v", took, err)
		}
		var id api.Identity
		if status == http.StatusCreated && json.Unmarshal(body, &id) == nil && id.Cert != nil {
			// Committed before the second member was gone.
			acks = append(acks, issued{action: registry.ActionIdentityAdd, identity: name, serial: id.Cert.Serial})
			continue
		}
		if firstFail == 0 {
			firstFail = time.Since(stopping)
		}
		if status == http.StatusServiceUnavailable && json.Unmarshal(body, &answer) == nil && strings.Contains(answer.Error, "etcd") {
			clean = time.Since(stopping)
		}
	}
	secondStop := <-stopDone
	// From now on a write is refused at once.
	start := time.Now()
	status, body, _ := call(client, m, "POST", api.PathIdentities, api.AddIdentityRequest{Name: "refused", TTL: "1h"})
	fast := time.Since(start)
	if status != http.StatusServiceUnavailable || fast > 2*time.Second {
		t.Fatalf("write after the refusal: %d %s after %s, want 503 at once", status, body, fast)
	}
	if ok, body := ready(); ok {
		t.Fatalf("ready without an etcd quorum: %s", body)
	}
	t.Logf("second etcd member stopped (quorum lost; its stop took %s): %d writes tried, the slowest answered in %s; first refused %s after the stop began, refused with 503 %q from %s on (contact bound %s), then each in %s; /readyz 503",
		secondStop.Round(time.Millisecond), len(attempts), slowest.Round(time.Millisecond), firstFail.Round(time.Millisecond), answer.Error, clean.Round(time.Millisecond), bound, fast.Round(time.Millisecond))
	for _, a := range attempts {
		t.Logf("write without quorum: %s", a)
	}
	// The member's stop, then the contact bound and a probe; margins for
	// a loaded machine.
	if clean > secondStop+bound+10*time.Second {
		t.Fatalf("writes refused clearly only %s after the stop began", clean)
	}

	// One member back.
	restarted := time.Now()
	cluster.Restart(second)
	memberBack := time.Since(restarted)
	// etcd announces no event for a returning quorum: try until a write
	// is acknowledged.
	attempt := 0
	if !pollUntil(30*time.Second, 50*time.Millisecond, func() bool {
		attempt++
		var id api.Identity
		status, body, err := call(client, m, "POST", api.PathIdentities, api.AddIdentityRequest{Name: fmt.Sprint("after-", attempt), TTL: "1h"})
		if err != nil || status != http.StatusCreated || json.Unmarshal(body, &id) != nil || id.Cert == nil {
			return false
		}
		acks = append(acks, issued{action: registry.ActionIdentityAdd, identity: id.Name, serial: id.Cert.Serial})
		return true
	}) {
		t.Fatal("no write acknowledged 30s after a member returned")
	}
	resumed := time.Since(restarted)
	if !pollUntil(10*time.Second, 50*time.Millisecond, func() bool { ok, _ := ready(); return ok }) {
		_, body := ready()
		t.Fatalf("not ready 10s after writes resumed: %s", body)
	}
	events = checkAcknowledged(t, st, acks)
	ids := checkWhole(t, st)
	t.Logf("one member back: the member was ready after %s, the next write acknowledged %s after its restart; all %d acknowledged writes in etcd, %d identities each with its certificate and audit record, %d audit events, store check clean",
		memberBack.Round(time.Millisecond), resumed.Round(time.Millisecond), len(acks), ids, events)
}
