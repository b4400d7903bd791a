package leader_test

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/leader"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// ttl is the lease of the tests' terms: etcd's smallest (an embedded
// member raises shorter ones to 2s).
const ttl = 2 * time.Second

// replica is one elector on its own store, as one meshca process.
type replica struct {
	name    string
	st      *store.Store
	el      *leader.Elector
	gained  chan time.Time // when this replica's work started, each term
	stopped chan struct{}  // closed when Run returned
	cancel  context.CancelFunc
}

// watch records how many replicas run their work at once.
type watch struct {
	mu           sync.Mutex
	active, most int
}

func (w *watch) work(ctx context.Context) error {
	w.mu.Lock()
	w.active++
	w.most = max(w.most, w.active)
	w.mu.Unlock()
	<-ctx.Done()
	w.mu.Lock()
	w.active--
	w.mu.Unlock()
	return nil
}

func (w *watch) maxConcurrent() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.most
}

// cluster starts n replicas on one fresh prefix of the member e.
func cluster(t *testing.T, e *testkit.Etcd, w *watch, n int) []*replica {
	t.Helper()
	kek := filepath.Join(t.TempDir(), "kek")
	prefix := "/leader-test/" + t.Name()
	var out []*replica
	for i := range n {
		sealer, err := seal.LoadOrCreate(kek)
		if err != nil {
			t.Fatal(err)
		}
		st, err := store.OpenEtcd(store.EtcdConfig{Endpoints: []string{e.Endpoint}, Prefix: prefix, Sealer: sealer})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		r := &replica{name: string(rune('a' + i)), st: st, gained: make(chan time.Time, 8), stopped: make(chan struct{})}
		r.el, err = leader.New(leader.Config{
			Elections: st,
			Self:      store.Candidate{ID: r.name, Address: "127.0.0.1:1" + r.name},
			Work:      []func(context.Context) error{w.work},
			OnChange: func(leading bool) {
				if leading {
					r.gained <- time.Now()
				}
			},
			TTL:    ttl,
			Retry:  50 * time.Millisecond,
			Logger: testkit.Logger(t),
		})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		r.cancel = cancel
		go func() {
			defer close(r.stopped)
			if err := r.el.Run(ctx); err != nil {
				t.Errorf("replica %s: %v", r.name, err)
			}
		}()
		t.Cleanup(func() {
			cancel()
			<-r.stopped
		})
		out = append(out, r)
	}
	return out
}

// firstLeader waits until one of rs leads and returns it.
func firstLeader(t *testing.T, rs []*replica, within time.Duration) (*replica, time.Time) {
	t.Helper()
	timeout := time.After(within)
	for {
		for _, r := range rs {
			select {
			case at := <-r.gained:
				return r, at
			default:
			}
		}
		select {
		case <-timeout:
			t.Fatalf("no replica leads after %s", within)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestElectionOnEtcd runs the election's cases on one etcd member.
func TestElectionOnEtcd(t *testing.T) {
	e := testkit.StartEtcd(t)
	t.Run("one leader of two", func(t *testing.T) { oneLeaderOfTwo(t, e) })
	t.Run("leader lost within ttl", func(t *testing.T) { leaderLostWithinTTL(t, e) })
}

// oneLeaderOfTwo: of two replicas campaigning on one etcd, exactly one
// leads and runs the work; both read it as the leader; when it resigns
// (stops), the other takes over at once, and at no moment did both run
// the work.
func oneLeaderOfTwo(t *testing.T, e *testkit.Etcd) {
	w := &watch{}
	rs := cluster(t, e, w, 2)
	first, _ := firstLeader(t, rs, 10*time.Second)
	other := rs[0]
	if other == first {
		other = rs[1]
	}
	if !first.el.Leading() || other.el.Leading() {
		t.Fatalf("leading: %s=%v %s=%v, want only %s", first.name, first.el.Leading(), other.name, other.el.Leading(), first.name)
	}
	for _, r := range rs {
		c, ok, err := r.el.Leader(context.Background())
		if err != nil || !ok || c.ID != first.name || c.Address != first.el.Self().Address {
			t.Fatalf("replica %s reads the leader as %+v (ok %v, err %v), want %s", r.name, c, ok, err, first.name)
		}
	}
	// The follower does not lead for as long as the leader holds its term
	// (a few lease renewals).
	select {
	case <-other.gained:
		t.Fatalf("%s leads while %s holds the term", other.name, first.name)
	case <-time.After(ttl + time.Second):
	}

	stopped := time.Now()
	first.cancel()
	<-first.stopped
	select {
	case at := <-other.gained:
		took := at.Sub(stopped)
		t.Logf("leader stopped and resigned: %s leads after %s", other.name, took.Round(time.Millisecond))
		if took > ttl {
			t.Fatalf("handover after a resignation took %s, longer than the lease %s", took, ttl)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("%s does not lead 10s after %s resigned", other.name, first.name)
	}
	if n := w.maxConcurrent(); n != 1 {
		t.Fatalf("%d replicas ran the singleton work at once", n)
	}
}

// leaderLostWithinTTL: the leader's process dies without resigning
// (its etcd client closes; the lease is left to expire). The other
// replica leads within the lease, with a margin for etcd's expiry sweep.
func leaderLostWithinTTL(t *testing.T, e *testkit.Etcd) {
	w := &watch{}
	rs := cluster(t, e, w, 2)
	first, _ := firstLeader(t, rs, 10*time.Second)
	other := rs[0]
	if other == first {
		other = rs[1]
	}
	died := time.Now()
	first.st.Close() // no Resign reaches etcd: the lease stays until it expires
	bound := ttl + 2*time.Second
	select {
	case at := <-other.gained:
		took := at.Sub(died)
		t.Logf("leader died: %s leads after %s (lease %s, bound %s)", other.name, took.Round(time.Millisecond), ttl, bound)
		if took > bound {
			t.Fatalf("takeover took %s, more than the bound %s", took, bound)
		}
	case <-time.After(3 * bound):
		t.Fatalf("%s does not lead %s after the leader died", other.name, 3*bound)
	}
	if first.el.Leading() {
		t.Fatal("the dead replica still says it leads")
	}
	c, ok, err := other.el.Leader(context.Background())
	if err != nil || !ok || c.ID != other.name {
		t.Fatalf("leader read as %+v (ok %v, err %v), want %s", c, ok, err, other.name)
	}
	if n := w.maxConcurrent(); n != 1 {
		t.Fatalf("%d replicas ran the singleton work at once", n)
	}
}

// TestBboltAlwaysLeads: on bbolt the only process leads at once, and its
// work is stopped when Run's context ends.
func TestBboltAlwaysLeads(t *testing.T) {
	st := testkit.OpenStore(t, filepath.Join(t.TempDir(), "data"), store.Config{})
	ran := make(chan struct{})
	el, err := leader.New(leader.Config{
		Elections: st,
		Self:      store.Candidate{ID: "solo", Address: "127.0.0.1:1"},
		Work: []func(context.Context) error{func(ctx context.Context) error {
			close(ran)
			<-ctx.Done()
			return nil
		}},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- el.Run(ctx) }()
	select {
	case <-ran:
	case <-time.After(5 * time.Second):
		t.Fatal("the work did not start on bbolt")
	}
	if c, ok, err := st.Leader(ctx); err != nil || !ok || c.ID != "solo" {
		t.Fatalf("leader on bbolt: %+v ok %v err %v", c, ok, err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after its context ended")
	}
	if _, ok, _ := st.Leader(context.Background()); ok || el.Leading() {
		t.Fatal("still a leader after Run returned")
	}
}
