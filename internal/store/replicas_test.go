package store_test

import (
	"context"
	"slices"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// runReplica runs s.RunReplica(r) until the returned stop is called;
// registered receives after each registration of r.
func runReplica(t *testing.T, s *store.Store, r store.Replica) (registered <-chan struct{}, stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	reg := make(chan struct{}, 8)
	go func() { done <- s.RunReplica(ctx, r, func() { reg <- struct{}{} }) }()
	stopped := false
	stop = func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("RunReplica(%s) = %v", r.ID, err)
			}
		case <-time.After(10 * time.Second):
			t.Errorf("RunReplica(%s) did not return within 10s of its context ending", r.ID)
		}
	}
	t.Cleanup(stop)
	return reg, stop
}

// waitRegistered waits for the next registration signalled on registered.
func waitRegistered(t *testing.T, registered <-chan struct{}, id string) {
	t.Helper()
	select {
	case <-registered:
	case <-time.After(10 * time.Second):
		t.Fatalf("replica %s not registered within 10s", id)
	}
}

// wantReplicas checks that s.Replicas lists exactly want (sorted).
func wantReplicas(t *testing.T, s *store.Store, want ...string) {
	t.Helper()
	rs, err := s.Replicas(context.Background())
	if err != nil {
		t.Fatalf("Replicas: %v", err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.ID+"="+r.XDS)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("replicas = %v, want %v", got, want)
	}
}

// TestReplicasOnEtcd registers two replicas on one prefix: each lists both,
// each key is attached to a lease of the configured TTL (so a killed
// replica's key expires), a lost lease is registered again, and a stopped
// replica is gone at once.
func TestReplicasOnEtcd(t *testing.T) {
	prefix := newPrefix(t)
	cfgA := etcdConfig(t, prefix)
	cfgA.ReplicaTTL = 3 * time.Second
	clk := cfgA.Clock.(*clock.Fake)
	a, b := openEtcd(t, cfgA), openEtcd(t, etcdConfig(t, prefix))
	if rs, err := a.Replicas(context.Background()); err != nil || len(rs) != 0 {
		t.Fatalf("Replicas before any registration = %v, %v", rs, err)
	}
	regA, stopA := runReplica(t, a, store.Replica{ID: "a", XDS: "10.0.0.1:6565", Since: t0})
	regB, stopB := runReplica(t, b, store.Replica{ID: "b", XDS: "10.0.0.2:6565", Since: t0})
	waitRegistered(t, regA, "a")
	waitRegistered(t, regB, "b")
	wantReplicas(t, a, "a=10.0.0.1:6565", "b=10.0.0.2:6565")
	wantReplicas(t, b, "a=10.0.0.1:6565", "b=10.0.0.2:6565")

	cli := etcdClient(t)
	ctx := context.Background()
	resp, err := cli.Get(ctx, prefix+"/replicas/a")
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("get a's key: %v %v", resp, err)
	}
	lease := resp.Kvs[0].Lease
	if lease == 0 {
		t.Fatal("a's registration is not attached to a lease: it would outlive a killed replica")
	}
	ttl, err := cli.TimeToLive(ctx, clientv3.LeaseID(lease))
	if err != nil {
		t.Fatal(err)
	}
	if ttl.GrantedTTL != 3 || ttl.TTL <= 0 {
		t.Fatalf("lease granted TTL %ds, remaining %ds; want 3s, alive", ttl.GrantedTTL, ttl.TTL)
	}
	t.Logf("a killed replica's registration disappears within its lease TTL: %ds", ttl.GrantedTTL)

	// The lease is lost (as when etcd was unreachable for longer than the
	// TTL): the key goes with it, and the replica registers again.
	calls := clk.AfterCalls()
	if _, err := cli.Revoke(ctx, clientv3.LeaseID(lease)); err != nil {
		t.Fatal(err)
	}
	wantReplicas(t, b, "b=10.0.0.2:6565") // a revoked lease takes its keys with it
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := clk.WaitForAfterCalls(wctx, calls+1); err != nil {
		t.Fatalf("replica a does not retry after losing its lease: %v", err)
	}
	clk.Add(2 * time.Second)
	waitRegistered(t, regA, "a")
	wantReplicas(t, b, "a=10.0.0.1:6565", "b=10.0.0.2:6565")

	// A replica that stops deregisters at once, without waiting for its TTL.
	stopA()
	wantReplicas(t, b, "b=10.0.0.2:6565")
	stopB()
	wantReplicas(t, b)
}

// TestReplicaOnBbolt: on bbolt the one local replica is the list.
func TestReplicaOnBbolt(t *testing.T) {
	s, _ := newStore(t)
	if _, err := s.Replicas(context.Background()); err != nil {
		t.Fatal(err)
	}
	reg, stop := runReplica(t, s, store.Replica{ID: "only", XDS: "127.0.0.1:6565", Since: t0})
	waitRegistered(t, reg, "only")
	wantReplicas(t, s, "only=127.0.0.1:6565")
	stop()
	wantReplicas(t, s)
}

func TestReplicaRefusesInvalid(t *testing.T) {
	s, _ := newStore(t)
	for _, r := range []store.Replica{{ID: "", XDS: "a:1"}, {ID: "a/b", XDS: "a:1"}, {ID: "a"}} {
		if err := s.RunReplica(context.Background(), r, nil); err == nil {
			t.Errorf("RunReplica(%+v) = nil, want an error", r)
		}
	}
}
