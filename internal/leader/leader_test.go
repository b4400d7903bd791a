package leader_test

import (
	"context"
	"io"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

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
	link    *link // its connections to etcd
	el      *leader.Elector
	gained  chan time.Time // when this replica's work started, each term
	lost    chan time.Time // when it stopped
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
		l := newLink(t, e.Endpoint)
		st, err := store.OpenEtcd(store.EtcdConfig{Endpoints: []string{l.addr()}, Prefix: prefix, Sealer: sealer, DialTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { st.Close() })
		r := &replica{name: string(rune('a' + i)), st: st, link: l, gained: make(chan time.Time, 8), lost: make(chan time.Time, 8), stopped: make(chan struct{})}
		r.el, err = leader.New(leader.Config{
			Elections: st,
			Self:      store.Candidate{ID: r.name, Address: "127.0.0.1:1" + r.name},
			Work:      []func(context.Context) error{w.work},
			OnChange: func(leading bool) {
				if leading {
					r.gained <- time.Now()
				} else {
					r.lost <- time.Now()
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
	t.Run("deposed leader stops its work", func(t *testing.T) { deposedLeaderStops(t, e) })
}

// deposedLeaderStops: the leader's lease is revoked behind its back (as
// etcd does when a paused leader's lease expires). Its work stops, from
// the election key's deletion, without waiting for the lease's keepalive,
// the other replica leads, and the deposed one campaigns again behind it.
func deposedLeaderStops(t *testing.T, e *testkit.Etcd) {
	w := &watch{}
	rs := cluster(t, e, w, 2)
	first, _ := firstLeader(t, rs, 10*time.Second)
	other := rs[0]
	if other == first {
		other = rs[1]
	}
	cli := e.Client()
	keys := "/leader-test/" + t.Name() + "/leader/"
	// Both stand: the follower's key is there before the leader is deposed.
	if !poll(10*time.Second, func() bool {
		resp, err := cli.Get(context.Background(), keys, clientv3.WithPrefix(), clientv3.WithCountOnly())
		return err == nil && resp.Count == 2
	}) {
		t.Fatal("the follower does not campaign")
	}
	resp, err := cli.Get(context.Background(), keys, clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("election key: %v", err)
	}
	deposed := time.Now()
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	bound := ttl / 2
	for _, ev := range []struct {
		what string
		ch   chan time.Time
	}{{first.name + " stops its work", first.lost}, {other.name + " leads", other.gained}} {
		select {
		case at := <-ev.ch:
			took := at.Sub(deposed)
			t.Logf("lease revoked: %s after %s (bound %s)", ev.what, took.Round(time.Millisecond), bound)
			if took > bound {
				t.Fatalf("%s after %s, more than %s", ev.what, took, bound)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not within 10s of the revocation", ev.what)
		}
	}
	c, ok, err := first.el.Leader(context.Background())
	if err != nil || !ok || c.ID != other.name {
		t.Fatalf("the deposed replica reads the leader as %+v (ok %v, err %v), want %s", c, ok, err, other.name)
	}
	select {
	case <-first.gained:
		t.Fatalf("%s leads again while %s holds the term", first.name, other.name)
	case <-time.After(ttl):
	}
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

// leaderLostWithinTTL: the leader is cut off from etcd (a dead process or
// a partition): it can neither renew its lease nor resign, and the lease
// is left to expire. The cut-off replica stops its work first; the other
// leads within the lease, with a margin for etcd's expiry sweep, and not
// before the lease could have expired (nothing was handed over); at no
// moment did both run the work.
func leaderLostWithinTTL(t *testing.T, e *testkit.Etcd) {
	w := &watch{}
	rs := cluster(t, e, w, 2)
	first, _ := firstLeader(t, rs, 10*time.Second)
	other := rs[0]
	if other == first {
		other = rs[1]
	}
	died := time.Now()
	first.link.cut() // no Resign reaches etcd: the lease stays until it expires
	bound := ttl + 2*time.Second
	var stoppedAt time.Time
	// The cut-off replica stops its own work once it heard no renewal for
	// two thirds of the lease: before etcd can elect another.
	select {
	case stoppedAt = <-first.lost:
		t.Logf("the cut-off replica stopped its work %s after the cut", stoppedAt.Sub(died).Round(time.Millisecond))
	case <-time.After(bound):
		t.Fatalf("the cut-off replica still runs its work %s after the cut", bound)
	}
	select {
	case at := <-other.gained:
		if !at.After(stoppedAt) {
			t.Fatalf("%s led from %s, before the cut-off leader stopped its work at %s", other.name, at.Sub(died), stoppedAt.Sub(died))
		}
		took := at.Sub(died)
		t.Logf("leader died: %s leads after %s (lease %s, bound %s)", other.name, took.Round(time.Millisecond), ttl, bound)
		if took > bound {
			t.Fatalf("takeover took %s, more than the bound %s", took, bound)
		}
		// The lease was renewed at most a third of it before the cut.
		if took < ttl/2 {
			t.Fatalf("takeover after %s: the dead leader's lease cannot have expired yet", took)
		}
	case <-time.After(3 * bound):
		t.Fatalf("%s does not lead %s after the leader died", other.name, 3*bound)
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

// poll checks cond every 10ms until it holds or timeout passed: for etcd's
// state, which announces nothing the test could wait on.
func poll(timeout time.Duration, cond func() bool) bool {
	deadline := time.After(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline:
			return cond()
		case <-tick.C:
		}
	}
	return true
}

// link forwards loopback TCP connections to etcd until cut: then it
// closes them all and refuses new ones, as a dead or partitioned replica
// would look to etcd.
type link struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []net.Conn
	isCut  bool
}

func newLink(t *testing.T, target string) *link {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &link{ln: ln, target: target}
	go l.serve()
	t.Cleanup(l.cut)
	return l
}

func (l *link) addr() string { return l.ln.Addr().String() }

func (l *link) serve() {
	for {
		c, err := l.ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", l.target, 5*time.Second)
		if err != nil || !l.track(c, up) {
			c.Close()
			if up != nil {
				up.Close()
			}
			continue
		}
		go pipe(c, up)
		go pipe(up, c)
	}
}

func (l *link) track(cs ...net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.isCut {
		return false
	}
	l.conns = append(l.conns, cs...)
	return true
}

func pipe(dst, src net.Conn) {
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

func (l *link) cut() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.isCut = true
	l.ln.Close()
	for _, c := range l.conns {
		c.Close()
	}
	l.conns = nil
}
