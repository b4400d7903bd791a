package main_test

// Reliability tests against the real binary: kill -9 under write load, and
// SIGTERM under write load. See RELIABILITY.md for what each one injects,
// its bounds and the figures of the last run.
//
// Every test logs its seed; MESHCA_SEED=N replays it. MESHCA_SOAK=1 runs
// the longer variant.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
)

const (
	issuers      = 4
	issuePeriod  = 20 * time.Millisecond // per issuer: at most 50 requests/s
	issueTimeout = 10 * time.Second      // a request taking this long counts as hung
)

// issueResult is the outcome of one POST /v1/identities.
type issueResult struct {
	name    string
	status  int // 0 when the request failed without an answer
	serial  string
	err     error
	took    time.Duration
	started time.Time
}

// loadGen runs capped-rate issuers against one admin address until stopped.
type loadGen struct {
	stop    chan struct{}
	wg      sync.WaitGroup
	mu      sync.Mutex
	results []issueResult
	changed chan struct{} // closed and replaced at each result
}

// waitUntil blocks until ok holds for the results so far, or fails after
// timeout.
func (g *loadGen) waitUntil(timeout time.Duration, ok func([]issueResult) bool) error {
	deadline := time.After(timeout)
	for {
		g.mu.Lock()
		done, ch := ok(g.results), g.changed
		g.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-deadline:
			return fmt.Errorf("load: condition not met within %s", timeout)
		}
	}
}

// answered counts the results with an HTTP answer.
func answered(rs []issueResult) int {
	n := 0
	for _, r := range rs {
		if r.status != 0 {
			n++
		}
	}
	return n
}

// startIssuers starts the issuers; names are c-<issuer>-<n>, with next[i]
// the next n of issuer i (kept across server lifetimes so names stay unique).
func startIssuers(admin string, next *[issuers]int) *loadGen {
	g := &loadGen{stop: make(chan struct{}), changed: make(chan struct{})}
	client := &http.Client{Timeout: issueTimeout, Transport: &http.Transport{}}
	for i := 0; i < issuers; i++ {
		g.wg.Add(1)
		go func(i int) {
			defer g.wg.Done()
			tick := time.NewTicker(issuePeriod)
			defer tick.Stop()
			for {
				select {
				case <-g.stop:
					return
				case <-tick.C:
				}
				name := fmt.Sprintf("c-%d-%d", i, next[i])
				next[i]++
				r := issueOne(client, admin, name)
				g.mu.Lock()
				g.results = append(g.results, r)
				close(g.changed)
				g.changed = make(chan struct{})
				g.mu.Unlock()
			}
		}(i)
	}
	return g
}

// halt stops the issuers and returns every result.
func (g *loadGen) halt() []issueResult {
	close(g.stop)
	g.wg.Wait()
	return g.results
}

func issueOne(client *http.Client, admin, name string) issueResult {
	body, _ := json.Marshal(api.AddIdentityRequest{Name: name})
	r := issueResult{name: name, started: time.Now()}
	req, _ := http.NewRequest("POST", "http://"+admin+api.PathIdentities, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		r.err = err
		r.took = time.Since(r.started)
		return r
	}
	data, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	r.took = time.Since(r.started)
	if err != nil {
		// The answer was cut off: not acknowledged.
		r.err = err
		return r
	}
	r.status = resp.StatusCode
	if resp.StatusCode == http.StatusCreated {
		var id api.Identity
		if err := json.Unmarshal(data, &id); err != nil || id.Cert == nil {
			r.status, r.err = 0, fmt.Errorf("201 with an unreadable body: %v %q", err, data)
			return r
		}
		r.serial = id.Cert.Serial
	}
	return r
}

// getJSON GETs an admin path and decodes it.
func getJSON(t *testing.T, admin, path string, out any) {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get("http://" + admin + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, out); err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
}

// stateCheck is what one check of a restarted server found.
type stateCheck struct {
	identities, audit int
}

// checkState checks the restarted server against the acknowledged writes
// (name -> serial of the 201 answer) and returns how many acknowledged
// writes are missing or changed (L). Any other inconsistency fails the test.
func checkState(t *testing.T, admin string, acked map[string]string, ca0 api.CA) (int, stateCheck) {
	t.Helper()
	var ids []api.Identity
	getJSON(t, admin, api.PathIdentities, &ids)
	byName := map[string]api.Identity{}
	serials := map[string]string{}
	for _, id := range ids {
		if id.Cert == nil || id.Cert.Serial == "" {
			t.Errorf("identity %s has no certificate", id.Name)
			continue
		}
		if other, dup := serials[id.Cert.Serial]; dup {
			t.Errorf("serial %s appears twice: %s and %s", id.Cert.Serial, other, id.Name)
		}
		serials[id.Cert.Serial] = id.Name
		byName[id.Name] = id
	}
	lost := 0
	for name, serial := range acked {
		id, ok := byName[name]
		switch {
		case !ok:
			t.Errorf("L: acknowledged identity %s missing after restart", name)
			lost++
		case id.Cert == nil || id.Cert.Serial != serial:
			t.Errorf("L: acknowledged identity %s has certificate %+v after restart, acknowledged serial %s", name, id.Cert, serial)
			lost++
		}
	}

	var evs []api.AuditEvent
	getJSON(t, admin, api.PathAudit+"?limit=100000", &evs)
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("audit seq %d at position %d: not 1..N without gaps", e.Seq, i)
		}
		if e.Outcome != "ok" || (e.Action != "identity.add" && e.Action != "cert.issue") {
			continue
		}
		id, ok := byName[e.Identity]
		if !ok {
			t.Errorf("audit %d: %s ok for %s, which does not exist", e.Seq, e.Action, e.Identity)
			continue
		}
		if e.Serial != id.Cert.Serial {
			t.Errorf("audit %d: %s of %s names serial %s, stored serial %s", e.Seq, e.Action, e.Identity, e.Serial, id.Cert.Serial)
		}
	}

	var ca api.CA
	getJSON(t, admin, api.PathCA, &ca)
	if ca.Issuer.Serial != ca0.Issuer.Serial || ca.Issuer.SHA256 != ca0.Issuer.SHA256 || len(ca.Roots) != len(ca0.Roots) {
		t.Fatalf("CA changed across a restart: %+v, was %+v", ca, ca0)
	}
	for i := range ca.Roots {
		if ca.Roots[i].Serial != ca0.Roots[i].Serial || ca.Roots[i].SHA256 != ca0.Roots[i].SHA256 {
			t.Fatalf("root %d changed across a restart: %+v, was %+v", i, ca.Roots[i], ca0.Roots[i])
		}
	}
	return lost, stateCheck{identities: len(ids), audit: len(evs)}
}

// boltCheck opens the stopped server's database read-only and runs bbolt's
// consistency check.
func boltCheck(t *testing.T, dataDir string) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dataDir, "meshca.db"), 0o600, &bolt.Options{Timeout: time.Second, ReadOnly: true})
	if err != nil {
		t.Fatalf("open the database after the last stop: %v", err)
	}
	defer db.Close()
	if err := db.View(func(tx *bolt.Tx) error {
		var errs []string
		for err := range tx.Check() {
			errs = append(errs, err.Error())
		}
		if len(errs) > 0 {
			return errors.New(strings.Join(errs, "; "))
		}
		return nil
	}); err != nil {
		t.Fatalf("bbolt check: %v", err)
	}
}

func TestCrashConsistency(t *testing.T) {
	rng := testkit.Rand(t)
	kills := 3
	if testkit.Soak() {
		kills = 20
	}
	start := time.Now()
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, dataDir)
	var ca0 api.CA
	getJSON(t, srv.admin, api.PathCA, &ca0)
	if ca0.Issuer.Serial == "" || len(ca0.Roots) == 0 {
		t.Fatalf("GET /v1/ca: %+v", ca0)
	}

	acked := map[string]string{}
	var next [issuers]int
	lost, sent, failed, survived := 0, 0, 0, 0
	var last stateCheck
	for k := 0; k < kills; k++ {
		g := startIssuers(srv.admin, &next)
		// A random moment in the load: after 5 to 75 answered requests.
		atAnswer := 5 + rng.IntN(71)
		if err := g.waitUntil(30*time.Second, func(rs []issueResult) bool { return answered(rs) >= atAnswer }); err != nil {
			t.Fatalf("kill %d: %d answers before the kill: %v", k+1, atAnswer, err)
		}
		if err := srv.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		<-srv.done
		for _, r := range g.halt() {
			sent++
			switch {
			case r.status == http.StatusCreated:
				if _, dup := acked[r.name]; dup {
					t.Fatalf("%s acknowledged twice", r.name)
				}
				acked[r.name] = r.serial
			case r.status != 0:
				t.Fatalf("%s: status %d before the kill", r.name, r.status)
			default:
				failed++ // cut off or refused by the kill: may or may not be stored
			}
		}
		srv = startServer(t, dataDir) // the kernel released the lock with the process
		survived++
		l, st := checkState(t, srv.admin, acked, ca0)
		lost += l
		last = st
		if t.Failed() {
			t.Fatalf("after kill %d: state inconsistent (L=%d)", k+1, lost)
		}
	}
	srv.stop(t)
	boltCheck(t, dataDir)
	t.Logf("kills survived %d/%d, requests %d, acknowledged writes %d, unanswered (cut off or refused at the kill) %d, identities stored %d, audit records %d, L=%d, bbolt check clean, %s",
		survived, kills, sent, len(acked), failed, last.identities, last.audit, lost, time.Since(start).Round(time.Millisecond))
	if lost != 0 {
		t.Fatalf("L=%d", lost)
	}
	if len(acked) == 0 {
		t.Fatal("no write was acknowledged: the test tested nothing")
	}
}

func TestGracefulStopUnderLoad(t *testing.T) {
	rng := testkit.Rand(t)
	rounds := 1
	if testkit.Soak() {
		rounds = 5
	}
	start := time.Now()
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, dataDir)
	acked := map[string]string{}
	var next [issuers]int
	var ca0 api.CA
	getJSON(t, srv.admin, api.PathCA, &ca0)
	lost, sent, refused, duringStop := 0, 0, 0, 0
	var maxStop, maxReq time.Duration
	for round := 0; round < rounds; round++ {
		g := startIssuers(srv.admin, &next)
		// A random moment in the load: after 40 to 80 answered requests.
		atAnswer := 40 + rng.IntN(41)
		if err := g.waitUntil(30*time.Second, func(rs []issueResult) bool { return answered(rs) >= atAnswer }); err != nil {
			t.Fatalf("round %d: %d answers before SIGTERM: %v", round+1, atAnswer, err)
		}
		sigAt := time.Now()
		srv.stop(t) // SIGTERM; exit 0 and "meshca stopped" within 15s
		exited := time.Now()
		maxStop = max(maxStop, exited.Sub(sigAt))
		// Let the issuers run against the stopped server: each sends one
		// more request at least.
		if err := g.waitUntil(30*time.Second, func(rs []issueResult) bool {
			after := 0
			for _, r := range rs {
				if r.started.After(exited) {
					after++
				}
			}
			return after >= issuers
		}); err != nil {
			t.Fatalf("round %d: requests after the exit: %v", round+1, err)
		}
		for _, r := range g.halt() {
			sent++
			maxReq = max(maxReq, r.took)
			if r.took >= issueTimeout-time.Second {
				t.Errorf("%s hung for %s (started %s after SIGTERM)", r.name, r.took, r.started.Sub(sigAt))
			}
			switch {
			case r.status == http.StatusCreated:
				acked[r.name] = r.serial
			case r.started.After(exited):
				// After the exit: refused at once, not hung, not answered.
				if !errors.Is(r.err, syscall.ECONNREFUSED) {
					t.Errorf("%s after the stop: status %d, err %v; want connection refused", r.name, r.status, r.err)
				}
				refused++
			case r.started.Before(sigAt) && r.status != 0:
				t.Errorf("%s before SIGTERM: status %d", r.name, r.status)
			default:
				duringStop++ // refused or cut off while stopping
			}
		}
		srv = startServer(t, dataDir)
		l, _ := checkState(t, srv.admin, acked, ca0)
		lost += l
	}
	srv.stop(t)
	boltCheck(t, dataDir)
	t.Logf("SIGTERM rounds %d, requests %d, acknowledged writes %d, failed while stopping %d, refused after exit %d, slowest stop %s, slowest request %s, L=%d, %s",
		rounds, sent, len(acked), duringStop, refused, maxStop.Round(time.Millisecond), maxReq.Round(time.Millisecond), lost, time.Since(start).Round(time.Millisecond))
	if lost != 0 {
		t.Fatalf("L=%d", lost)
	}
	if refused == 0 {
		t.Fatal("no request was sent after the exit: the refusal was not tested")
	}
}
