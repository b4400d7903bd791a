package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// failoverGoal is the most the nodes of a killed replica may take, from
// the failure being detected, to be on another replica and current.
const failoverGoal = 2 * time.Second

// failoverResult is one timed failover.
type failoverResult struct {
	detect           time.Duration // kill → first stream ended
	spread           time.Duration // first → last stream ended, as the client process noticed
	took             time.Duration // first stream ended → last node current on the other server
	fromKill         time.Duration // kill → last node current
	p50, p99         time.Duration // per node: stream ended → current
	attempts, failed int64
	failures         string // why connections failed, as the clients said
	// CPU the surviving server and the client process used from the kill
	// until the last node was current.
	serverCPU, clientCPU time.Duration
	// storeCPU is what the etcd worker used meanwhile (meshca only).
	storeCPU time.Duration
}

// runFailover kills the replica that n nodes are connected to and times
// until every node is on the other replica with what it held; baseline:
// the same nodes failing over between two naive go-control-plane servers.
func runFailover(ctx context.Context, env *Env) (*Report, error) {
	n := 1000
	if env.Quick {
		n = 20
	}
	rs, err := startReplicas(ctx, env, "failover", 1, Seed{Identities: max(1, n/10), Nodes: n})
	if err != nil {
		return nil, err
	}
	defer rs.stop()
	rs.fc.naiveIn = filepath.Join(filepath.Dir(rs.fc.nodesFile), "naive.json")
	nodes, err := ReadNodes(rs.fc.nodesFile)
	if err != nil {
		return nil, err
	}
	// Read while no server writes: the identities' certificates do not
	// change during the section.
	if err := WriteNaiveInput(ctx, rs.fc.data, rs.target, nodes, rs.fc.naiveIn); err != nil {
		return nil, fmt.Errorf("naive server input: %w", err)
	}

	mesh, err := rs.fc.failover(ctx, env, rs.a.Proc, rs.a.XDS, rs.b.Proc, rs.b.XDS, rs.etcd)
	if err != nil {
		return nil, fmt.Errorf("meshca: %w", err)
	}
	rs.a = nil // killed
	events, err := xdsEvents(ctx, rs.b.Admin)
	if err != nil {
		return nil, fmt.Errorf("replica B's metrics: %w", err)
	}
	env.Logf("meshca: %d nodes: kill → first stream ended %s; → all current on B %s (p50 %s, p99 %s per node); %d connections tried, %d failed; B's CPU %s, clients' %s, etcd's %s",
		n, fmtDur(mesh.detect), fmtDur(mesh.took), fmtDur(mesh.p50), fmtDur(mesh.p99), mesh.attempts, mesh.failed, fmtDur(mesh.serverCPU), fmtDur(mesh.clientCPU), fmtDur(mesh.storeCPU))

	na, addrA, err := rs.fc.startNaive(ctx, env)
	if err != nil {
		return nil, err
	}
	defer na.Stop()
	nb, addrB, err := rs.fc.startNaive(ctx, env)
	if err != nil {
		return nil, err
	}
	defer nb.Stop()
	base, err := rs.fc.failover(ctx, env, na, addrA, nb, addrB, nil)
	if err != nil {
		return nil, fmt.Errorf("naive servers: %w", err)
	}
	env.Logf("meshca: failed connections: %s; B's xDS counters: %s", mesh.failures, events)
	env.Logf("naive: %d nodes: kill → first stream ended %s; → all current on B %s (p50 %s, p99 %s per node); %d connections tried, %d failed; B's CPU %s, clients' %s",
		n, fmtDur(base.detect), fmtDur(base.took), fmtDur(base.p50), fmtDur(base.p99), base.attempts, base.failed, fmtDur(base.serverCPU), fmtDur(base.clientCPU))

	rep := &Report{Intro: fmt.Sprintf("Two meshca replicas (bin/meshca) on one etcd member (the etcd worker, fsync on); %d sidecar "+
		"nodes (seeded in etcd, one identity per ten nodes) in one client process, each with its own mTLS connection and ADS stream "+
		"(bundle and identity secrets, every response ACKed) to replica A, each knowing both replicas as an Envoy bootstrap "+
		"listing every replica does, and each connecting from its own loopback address (127.1.x.y), as nodes on their own "+
		"hosts would. A is killed with SIGKILL; a node whose stream ends connects at once to the next replica (after a whole "+
		"round of failures it backs off, jittered from 100 ms, doubling up to 1 s). Figure: from the first stream ending (the "+
		"failure detected) until every node has been served by B exactly the bundle and certificate it held (nothing changed "+
		"meanwhile). Baseline: the same nodes, same client process, failing over between two naive go-control-plane servers "+
		"(the fan-out section's, serving the same credentials, no authentication beyond mTLS, no limits), the first killed "+
		"with SIGKILL, in the same run.", n)}
	rep.Rows = append(rep.Rows,
		Row{Figure: fmt.Sprintf("failover of %d nodes: first stream ended → all current on B", n), Value: fmtDur(mesh.took),
			Baseline: fmtDur(base.took), Ratio: float64(mesh.took) / float64(base.took), Goal: "≤ 2 s", Verdict: Judge(mesh.took <= failoverGoal)},
		Row{Figure: "kill → first stream ended (detection)", Value: fmtDur(mesh.detect), Baseline: fmtDur(base.detect)},
		Row{Figure: "first → last stream ended (the client process noticing every loss)", Value: fmtDur(mesh.spread), Baseline: fmtDur(base.spread)},
		Row{Figure: "kill → all current on B", Value: fmtDur(mesh.fromKill), Baseline: fmtDur(base.fromKill),
			Ratio: float64(mesh.fromKill) / float64(base.fromKill)},
		Row{Figure: "per node, stream ended → current on B, p50 / p99", Value: fmtDur(mesh.p50) + " / " + fmtDur(mesh.p99),
			Baseline: fmtDur(base.p50) + " / " + fmtDur(base.p99)},
		Row{Figure: "connections tried during the failover (of which failed)", Value: fmt.Sprintf("%d (%d)", mesh.attempts, mesh.failed),
			Baseline: fmt.Sprintf("%d (%d)", base.attempts, base.failed)},
		Row{Figure: "CPU meanwhile: surviving server + client process", Value: fmtDur(mesh.serverCPU) + " + " + fmtDur(mesh.clientCPU),
			Baseline: fmtDur(base.serverCPU) + " + " + fmtDur(base.clientCPU), Ratio: ratioOf(int64(mesh.serverCPU), int64(base.serverCPU))},
		Row{Figure: "etcd's CPU meanwhile (the naive servers have no store)", Value: fmtDur(mesh.storeCPU)},
		Row{Figure: "surviving server's CPU per node", Value: fmtDur(mesh.serverCPU / time.Duration(n)), Baseline: fmtDur(base.serverCPU / time.Duration(n))},
	)
	cores := time.Duration(runtime.NumCPU())
	rep.Notes = append(rep.Notes, fmt.Sprintf("The client process shares the machine's %d cores: it used %s of CPU to notice the losses, "+
		"reconnect, handshake and check every response (%s in the baseline run), and the surviving server %s (%s): with both on "+
		"these cores and nothing else running, no failover here could take much less than %s (meshca) or %s (baseline).",
		cores, fmtDur(mesh.clientCPU), fmtDur(base.clientCPU), fmtDur(mesh.serverCPU), fmtDur(base.serverCPU),
		fmtDur((mesh.clientCPU+mesh.serverCPU)/cores), fmtDur((base.clientCPU+base.serverCPU)/cores)))
	rep.Notes = append(rep.Notes, "Why connections got no response (as the clients saw it): meshca: "+orDash(mesh.failures)+"; baseline: "+
		orDash(base.failures)+". Replica B's xDS counters afterwards: "+events+".")
	return rep, nil
}

// xdsEvents returns the non-zero meshca_xds_events_total counters of the
// meshca whose admin API is at admin, as "event=N, ...".
func xdsEvents(ctx context.Context, admin string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var out []string
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), `meshca_xds_events_total{event="`)
		if !ok {
			continue
		}
		event, value, _ := strings.Cut(rest, `"} `)
		if value != "0" {
			out = append(out, event+"="+value)
		}
	}
	slices.Sort(out)
	if len(out) == 0 {
		return "none", sc.Err()
	}
	return strings.Join(out, ", "), sc.Err()
}

// failover connects the case's nodes to the server at addrA (process a),
// kills a, and times every node until it is current on the server at
// addrB (process b).
func (fc *fanoutCase) failover(ctx context.Context, env *Env, a *Proc, addrA string, b *Proc, addrB string, store *Proc) (failoverResult, error) {
	var res failoverResult
	clients, err := StartWorker(ctx, env, "failover-clients", "-nodes", fc.nodesFile, "-bundle", fc.bundleFile, "-addrs", addrA+","+addrB)
	if err != nil {
		return res, err
	}
	defer clients.Stop()
	if _, err := clients.Expect("ready ", time.Minute+time.Duration(fc.n)*20*time.Millisecond); err != nil {
		return res, fmt.Errorf("clients: %w", err)
	}
	if err := clients.Send("failover"); err != nil {
		return res, err
	}
	if _, err := clients.Expect("armed ", 30*time.Second); err != nil {
		return res, err
	}
	server0, err1 := cpuOf(b.Pid())
	client0, err2 := cpuOf(clients.Pid())
	if err := errors.Join(err1, err2); err != nil {
		return res, err
	}
	var store0 time.Duration
	if store != nil {
		if store0, err = cpuOf(store.Pid()); err != nil {
			return res, err
		}
	}
	killed := time.Now()
	a.Kill()
	<-a.done
	done, err := clients.Expect("done ", time.Minute+time.Duration(fc.n)*20*time.Millisecond)
	if err != nil {
		return res, fmt.Errorf("clients: %w", err)
	}
	if res.failures, err = clients.Expect("failures", 10*time.Second); err != nil {
		return res, fmt.Errorf("clients: %w", err)
	}
	server1, err1 := cpuOf(b.Pid())
	client1, err2 := cpuOf(clients.Pid())
	if err := errors.Join(err1, err2); err != nil {
		return res, err
	}
	res.serverCPU, res.clientCPU = server1-server0, client1-client0
	if store != nil {
		store1, err := cpuOf(store.Pid())
		if err != nil {
			return res, err
		}
		res.storeCPU = store1 - store0
	}
	f := fields(done)
	var v [7]int64
	for i, k := range []string{"first_lost", "last", "p50", "p99", "attempts", "failed", "last_lost"} {
		if v[i], err = strconv.ParseInt(f[k], 10, 64); err != nil {
			return res, fmt.Errorf("clients said %q: %w", done, err)
		}
	}
	firstLost, last := time.Unix(0, v[0]), time.Unix(0, v[1])
	res.detect, res.took, res.fromKill = firstLost.Sub(killed), last.Sub(firstLost), last.Sub(killed)
	res.spread = time.Unix(0, v[6]).Sub(firstLost)
	res.p50, res.p99, res.attempts, res.failed = time.Duration(v[2]), time.Duration(v[3]), v[4], v[5]
	return res, nil
}
