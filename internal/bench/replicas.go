package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/api"
)

// propagationGoal is the most a change made on one replica may take to
// reach a node connected to another, at the 99th percentile.
const propagationGoal = 250 * time.Millisecond

// replicaSet is an etcd cluster (the etcd worker) and two meshca replicas
// on it, A and B, started with bin/meshca on data directories that hold
// only the same key-encryption key.
type replicaSet struct {
	etcd   *Proc
	target EtcdTarget
	fc     *fanoutCase
	a, b   *Meshca
}

// startReplicas starts an etcd of members members, seeds s into it (under
// env.Dir/name) and starts replicas A and B with extra server flags.
func startReplicas(ctx context.Context, env *Env, name string, members int, s Seed, extra ...string) (*replicaSet, error) {
	etcd, endpoints, err := StartEtcd(ctx, env, name+"-etcd", members)
	if err != nil {
		return nil, err
	}
	rs := &replicaSet{etcd: etcd, target: EtcdTarget{Endpoints: endpoints, Prefix: etcdPrefix}}
	s.Etcd = rs.target
	if rs.fc, err = seedCase(ctx, env, name, s, false); err != nil {
		rs.stop()
		return nil, err
	}
	cfg := filepath.Join(env.Dir, name, "meshca.yaml")
	yaml := fmt.Sprintf("store:\n  etcd:\n    endpoints: [%s]\n    prefix: %s\n", strings.Join(endpoints, ", "), etcdPrefix)
	if err := os.WriteFile(cfg, []byte(yaml), 0o600); err != nil {
		rs.stop()
		return nil, err
	}
	dirB := rs.fc.data + "-b"
	if err := copyDir(rs.fc.data, dirB); err != nil {
		rs.stop()
		return nil, err
	}
	args := append([]string{"--config", cfg}, extra...)
	if rs.a, _, err = StartMeshca(ctx, env, rs.fc.data, args...); err != nil {
		rs.stop()
		return nil, fmt.Errorf("replica A: %w", err)
	}
	if rs.b, _, err = StartMeshca(ctx, env, dirB, args...); err != nil {
		rs.stop()
		return nil, fmt.Errorf("replica B: %w", err)
	}
	return rs, nil
}

// stop stops the replicas still running, then etcd.
func (rs *replicaSet) stop() {
	for _, m := range []*Meshca{rs.a, rs.b} {
		if m != nil {
			m.Stop()
		}
	}
	rs.etcd.Stop()
}

// runPropagation times changes made through replica A's admin API until
// they reach nodes connected to replica B, against nodes connected to A
// itself, which receive the same change in the same run.
func runPropagation(ctx context.Context, env *Env) (*Report, error) {
	writes, perReplica := 200, 10
	if env.Quick {
		writes, perReplica = 5, 2
	}
	rs, err := startReplicas(ctx, env, "replicas", 1, Seed{Identities: 1, Nodes: 2 * perReplica})
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	nodes, err := ReadNodes(rs.fc.nodesFile)
	if err != nil {
		return nil, err
	}
	onA, err := rs.fc.clientsOn(ctx, env, "on-a", nodes[:perReplica], rs.a.XDS)
	if err != nil {
		return nil, fmt.Errorf("nodes on A: %w", err)
	}
	defer onA.Stop()
	onB, err := rs.fc.clientsOn(ctx, env, "on-b", nodes[perReplica:], rs.b.XDS)
	if err != nil {
		return nil, fmt.Errorf("nodes on B: %w", err)
	}
	defer onB.Stop()

	var toA, toB, acked, afterAck []time.Duration
	for i := 0; i < writes; i++ {
		for _, p := range []*Proc{onA, onB} {
			if err := p.Send("watch " + WatchIdentity); err != nil {
				return nil, err
			}
			if _, err := p.Expect("armed ", 30*time.Second); err != nil {
				return nil, err
			}
		}
		start := time.Now()
		if err := reissue(ctx, rs.a.Admin, "id-0"); err != nil {
			return nil, fmt.Errorf("write %d: %w", i, err)
		}
		ack := time.Since(start)
		lastA, err1 := lastOf(onA)
		lastB, err2 := lastOf(onB)
		if err := errors.Join(err1, err2); err != nil {
			return nil, fmt.Errorf("write %d: %w", i, err)
		}
		toA, toB, acked = append(toA, lastA.Sub(start)), append(toB, lastB.Sub(start)), append(acked, ack)
		afterAck = append(afterAck, lastB.Sub(start)-ack)
	}
	for _, d := range [][]time.Duration{toA, toB, acked, afterAck} {
		slices.Sort(d)
	}
	p50, p99 := func(d []time.Duration) time.Duration { return d[len(d)/2] }, func(d []time.Duration) time.Duration { return d[len(d)*99/100] }
	env.Logf("%d writes on A: node on B p50 %s p99 %s; node on A p50 %s p99 %s; admin call p50 %s", writes,
		fmtDur(p50(toB)), fmtDur(p99(toB)), fmtDur(p50(toA)), fmtDur(p99(toA)), fmtDur(p50(acked)))
	rep := &Report{Intro: fmt.Sprintf("Two meshca replicas (bin/meshca, separate processes) on one etcd member (the etcd worker, "+
		"fsync on). %d sidecar nodes connect to replica A and %d to replica B (mTLS ADS streams from two client processes, as in "+
		"the fan-out section), all holding the identity id-0. Each write is `POST /v1/reissue/id-0` through A's admin API: a new "+
		"key and certificate, committed to etcd; A's nodes learn of it through A's own watch of etcd, B's through B's. Figure: "+
		"from sending the write until the last node on B holds the new certificate, over %d writes one after another. "+
		"Baseline: the same write reaching the nodes on A, the replica that made it, in the same run.", perReplica, perReplica, writes)}
	rep.Rows = append(rep.Rows,
		Row{Figure: "write on A → nodes on B, p50", Value: fmtDur(p50(toB)), Baseline: fmtDur(p50(toA)) + " (on A)",
			Ratio: ratioOf(int64(p50(toB)), int64(p50(toA)))},
		Row{Figure: "write on A → nodes on B, p99", Value: fmtDur(p99(toB)), Baseline: fmtDur(p99(toA)) + " (on A)",
			Ratio: ratioOf(int64(p99(toB)), int64(p99(toA))), Goal: "≤ 250 ms", Verdict: Judge(p99(toB) <= propagationGoal)},
		Row{Figure: "of which until A acknowledged the write, p50 / p99", Value: fmtDur(p50(acked)) + " / " + fmtDur(p99(acked))},
		Row{Figure: "acknowledged → nodes on B, p50 / p99", Value: fmtDur(p50(afterAck)) + " / " + fmtDur(p99(afterAck))},
	)
	return rep, nil
}

// clientsOn starts an xds-clients worker for nodes (written to a file
// named name) against addr, each node asking for its identity too, and
// waits until every stream holds its first response.
func (fc *fanoutCase) clientsOn(ctx context.Context, env *Env, name string, nodes []SeedNode, addr string) (*Proc, error) {
	file := filepath.Join(filepath.Dir(fc.nodesFile), name+".jsonl")
	if err := WriteNodes(file, nodes); err != nil {
		return nil, err
	}
	p, err := StartWorker(ctx, env, "xds-clients", "-nodes", file, "-bundle", fc.bundleFile, "-addr", addr, "-identity")
	if err != nil {
		return nil, err
	}
	if _, err := p.Expect("ready ", time.Minute+time.Duration(len(nodes))*20*time.Millisecond); err != nil {
		p.Stop()
		return nil, err
	}
	return p, nil
}

// lastOf waits for a watch's "done" line and returns when its last stream
// saw the change.
func lastOf(p *Proc) (time.Time, error) {
	done, err := p.Expect("done ", time.Minute)
	if err != nil {
		return time.Time{}, err
	}
	ns, err := strconv.ParseInt(fields(done)["last"], 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("clients said %q: %w", done, err)
	}
	return time.Unix(0, ns), nil
}

// reissue re-keys one identity through the admin API, as
// `meshca identity reissue NAME` does.
func reissue(ctx context.Context, admin, name string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+api.PathReissue+"/"+name, strings.NewReader("{}"))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("reissue %s: %s: %s", name, resp.Status, body)
	}
	return nil
}
