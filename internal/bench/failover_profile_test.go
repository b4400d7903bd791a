package bench

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

var (
	failoverProfile = flag.String("failover.profile", "", "write a CPU profile of the surviving replica during a failover to this directory")
	failoverNodes   = flag.Int("failover.nodes", 1000, "nodes for -failover.profile")
)

// TestProfileFailover runs the failover section's setup with replica B in
// this process and profiles B from the kill of A until every node is
// current on B (cpu.pprof). It runs only with -failover.profile:
//
//	go test -run TestProfileFailover ./internal/bench -args -failover.profile /tmp/prof
//	go tool pprof -top /tmp/prof/cpu.pprof
func TestProfileFailover(t *testing.T) {
	if *failoverProfile == "" {
		t.Skip("profiles only with -failover.profile DIR")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	env := testEnv(t, os.Stderr)
	env.Meshca = buildMeshca(t)
	etcd, endpoints, err := StartEtcd(ctx, env, "etcd", 1)
	if err != nil {
		t.Fatal(err)
	}
	defer etcd.Stop()
	target := EtcdTarget{Endpoints: endpoints, Prefix: etcdPrefix}
	fc, err := seedCase(ctx, env, "failover", Seed{Identities: max(1, *failoverNodes/10), Nodes: *failoverNodes, Etcd: target}, false)
	if err != nil {
		t.Fatal(err)
	}
	yaml := filepath.Join(env.Dir, "meshca.yaml")
	if err := os.WriteFile(yaml, fmt.Appendf(nil, "store:\n  etcd:\n    endpoints: [%s]\n    prefix: %s\n", strings.Join(endpoints, ", "), etcdPrefix), 0o600); err != nil {
		t.Fatal(err)
	}
	a, _, err := StartMeshca(ctx, env, fc.data, "--config", yaml)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	dirB := fc.data + "-b"
	if err := copyDir(fc.data, dirB); err != nil {
		t.Fatal(err)
	}
	cfg := testkit.LoopbackConfig(dirB)
	cfg.Store.Etcd = config.Etcd{Endpoints: endpoints, Prefix: etcdPrefix}
	bctx, stopB := context.WithCancel(ctx)
	b, err := app.Start(bctx, cfg, slog.New(slog.DiscardHandler))
	if err != nil {
		stopB()
		t.Fatal(err)
	}
	bDone := make(chan error, 1)
	go func() { bDone <- b.Wait(bctx) }()
	defer func() { stopB(); <-bDone }()

	clients, err := StartWorker(ctx, env, "failover-clients", "-nodes", fc.nodesFile, "-bundle", fc.bundleFile, "-addrs", a.XDS+","+b.XDS)
	if err != nil {
		t.Fatal(err)
	}
	defer clients.Stop()
	if _, err := clients.Expect("ready ", 5*time.Minute); err != nil {
		t.Fatal(err)
	}
	if err := clients.Send("failover"); err != nil {
		t.Fatal(err)
	}
	if _, err := clients.Expect("armed ", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(*failoverProfile, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(*failoverProfile, "cpu.pprof"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	a.Kill()
	<-a.done
	done, err := clients.Expect("done ", 5*time.Minute)
	pprof.StopCPUProfile()
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(killed)
	why, _ := clients.Expect("failures", 10*time.Second)
	events, err := xdsEvents(ctx, b.Admin)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d nodes: kill → all current on B in %s; clients: %s; failures: %s; B's xDS counters: %s", fc.n, took, done, why, events)
}
