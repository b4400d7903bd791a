package bench

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"
)

// memoryGoal is the most an idle authenticated stream may cost meshca.
const memoryGoal = 64 << 10

// fanoutGoal is the most meshca's bundle fan-out may take, as a share of
// the naive baseline's, from fanoutGoalFrom streams on.
const (
	fanoutGoal     = 0.5
	fanoutGoalFrom = 1000
)

// fanoutSizes are the stream counts of the fan-out section.
func fanoutSizes(quick bool) []int {
	if quick {
		return []int{20}
	}
	return []int{100, 1000, 10000}
}

// runFanout times a trust-bundle change reaching every stream: meshca's
// root rotation against a naive go-control-plane server that sets a new
// snapshot per node, with the same nodes, TLS and client process.
func runFanout(ctx context.Context, env *Env) (*Report, error) {
	rep := &Report{Intro: "Each of N sidecar nodes (seeded through meshca's registry, one identity per ten nodes) holds one " +
		"mTLS connection with its own node certificate and one ADS stream on it asking for the trust bundle and its identity " +
		"secret, ACKing every response as Envoy does; all clients run in one separate process, which stops collecting garbage " +
		"once connected. meshca: `POST /v1/ca/rotate " +
		"{\"root\":true}` publishes a new root beside the old one to every node. Baseline: a go-control-plane v0.14.0 " +
		"SnapshotCache server (ads=false, same credentials, same mTLS, same client process) that builds a bundle with one more " +
		"root and calls SetSnapshot for every node, one after another. Figure: from the trigger until the last stream has " +
		"received a bundle holding a root it did not hold before (median stream in brackets). CPU times are read from /proc " +
		"in 10 ms ticks. Each figure is the median of three trials (one in quick mode), meshca and baseline taking turns; " +
		"each meshca trial starts from a fresh copy of the seeded data directory, since a root rotation cannot be repeated " +
		"while one is in progress."}
	type pair struct {
		n            int
		meshca, base fanoutResult
	}
	var runs []pair
	for _, n := range fanoutSizes(env.Quick) {
		fc, err := prepareFanout(ctx, env, fmt.Sprintf("n%d", n), n)
		if err != nil {
			return nil, err
		}
		trials := 3
		if env.Quick {
			trials = 1
		}
		var bases, meshes []fanoutResult
		for t := 0; t < trials; t++ {
			base, err := fc.naiveBundleChange(ctx, env)
			if err != nil {
				return nil, fmt.Errorf("naive server, %d streams: %w", n, err)
			}
			env.Logf("naive: bundle change to %d streams in %s (SetSnapshot loop %s, %d responses; server CPU %s)", n, fmtDur(base.last), fmtDur(base.trigger), base.responses, fmtDur(base.serverCPU))
			data := filepath.Join(env.Dir, fmt.Sprintf("n%d-trial%d", n, t))
			if err := copyDir(fc.data, data); err != nil {
				return nil, err
			}
			mesh, err := fc.meshcaBundleChange(ctx, env, data)
			if err != nil {
				return nil, fmt.Errorf("meshca, %d streams: %w", n, err)
			}
			env.Logf("meshca: bundle change to %d streams in %s (admin call %s, %d responses, at most %d per stream; server CPU %s; %s)",
				n, fmtDur(mesh.last), fmtDur(mesh.trigger), mesh.responses, mesh.most, fmtDur(mesh.serverCPU), mesh.counts)
			bases, meshes = append(bases, base), append(meshes, mesh)
		}
		runs = append(runs, pair{n, medianResult(meshes), medianResult(bases)})
		if trials > 1 {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%d streams, the %d trials: meshca %s; baseline %s.", n, trials, trialList(meshes), trialList(bases)))
		}
		// A garbage collection that falls inside one trial's push and not
		// another's makes the server CPU of the trials differ by the cost of
		// a cycle over every stream's memory: say which trials had one.
		for t, m := range meshes {
			rep.Notes = append(rep.Notes, fmt.Sprintf("%d streams, meshca trial %d: server CPU %s; %s.", n, t+1, fmtDur(m.serverCPU), m.counts))
		}
	}
	for _, r := range runs {
		ratio := r.meshca.last.Seconds() / r.base.last.Seconds()
		row := Row{
			Figure:   fmt.Sprintf("bundle change to %d streams", r.n),
			Value:    fmt.Sprintf("%s (%s)", fmtDur(r.meshca.last), fmtDur(r.meshca.median)),
			Baseline: fmt.Sprintf("%s (%s)", fmtDur(r.base.last), fmtDur(r.base.median)),
			Ratio:    ratio,
		}
		if r.n >= fanoutGoalFrom {
			row.Goal, row.Verdict = fmt.Sprintf("≤ %.1f×", fanoutGoal), Judge(ratio <= fanoutGoal)
		}
		rep.Rows = append(rep.Rows, row)
		rep.Rows = append(rep.Rows, Row{
			Figure: fmt.Sprintf("of which until the trigger returns, %d streams (meshca: admin call; baseline: SetSnapshot loop)", r.n),
			Value:  fmtDur(r.meshca.trigger), Baseline: fmtDur(r.base.trigger),
		}, Row{
			Figure:   fmt.Sprintf("CPU used meanwhile, %d streams: server + client process", r.n),
			Value:    fmtDur(r.meshca.serverCPU) + " + " + fmtDur(r.meshca.clientCPU),
			Baseline: fmtDur(r.base.serverCPU) + " + " + fmtDur(r.base.clientCPU),
		}, Row{
			Figure: fmt.Sprintf("server CPU per stream, %d streams", r.n),
			Value:  fmtDur(r.meshca.serverCPU / time.Duration(r.n)), Baseline: fmtDur(r.base.serverCPU / time.Duration(r.n)),
			Ratio: ratioOf(int64(r.meshca.serverCPU), int64(r.base.serverCPU)),
		})
	}
	for _, r := range runs {
		rep.Rows = append(rep.Rows, Row{
			Figure:   fmt.Sprintf("growth: time per stream at %d streams", r.n),
			Value:    fmtDur(r.meshca.last / time.Duration(r.n)),
			Baseline: fmtDur(r.base.last / time.Duration(r.n)),
		})
	}
	for i := 1; i < len(runs); i++ {
		a, b := runs[i-1], runs[i]
		rep.Notes = append(rep.Notes, fmt.Sprintf("Growth from %d to %d streams (×%.0f): meshca ×%.1f, baseline ×%.1f.",
			a.n, b.n, float64(b.n)/float64(a.n), b.meshca.last.Seconds()/a.meshca.last.Seconds(), b.base.last.Seconds()/a.base.last.Seconds()))
	}
	for _, r := range runs {
		if min(r.meshca.clientCPU, r.base.clientCPU) < 10*(time.Second/clockTicks) {
			continue // too few ticks to say anything
		}
		rep.Notes = append(rep.Notes, fmt.Sprintf("The client process shares the machine's %d cores: at %d streams it used %s (meshca run) and %s "+
			"(baseline run) of CPU to receive, check and ACK the change, so no server could finish in much less than %s there, "+
			"against a goal of %s.", runtime.NumCPU(), r.n, fmtDur(r.meshca.clientCPU), fmtDur(r.base.clientCPU),
			fmtDur(min(r.meshca.clientCPU, r.base.clientCPU)/time.Duration(runtime.NumCPU())), fmtDur(time.Duration(fanoutGoal*float64(r.base.last)))))
	}
	for _, r := range runs {
		rep.Notes = append(rep.Notes, fmt.Sprintf("Connecting %d streams until all held their first response: meshca %s, baseline %s.",
			r.n, fmtDur(r.meshca.connect), fmtDur(r.base.connect)))
	}
	return rep, nil
}

// runMemory measures what an idle authenticated stream costs the server:
// RSS and Go heap before and after N streams connect, divided by N.
func runMemory(ctx context.Context, env *Env) (*Report, error) {
	n := 10000
	if env.Quick {
		n = 20
	}
	fc, err := prepareFanout(ctx, env, "data", n)
	if err != nil {
		return nil, err
	}
	m, _, err := StartMeshca(ctx, env, fc.data)
	if err != nil {
		return nil, err
	}
	mesh, err := fc.idleCost(ctx, env, m.XDS, func() (memSample, error) { return meshcaMem(ctx, m) })
	m.Stop()
	if err != nil {
		return nil, fmt.Errorf("meshca: %w", err)
	}
	env.Logf("meshca: %d idle streams: %s", n, mesh)
	base, err := fc.naiveIdleCost(ctx, env)
	if err != nil {
		return nil, fmt.Errorf("naive server: %w", err)
	}
	env.Logf("naive: %d idle streams: %s", n, base)

	per := func(d memSample) memSample {
		return memSample{rss: d.rss / int64(n), heap: d.heap / int64(n), stack: d.stack / int64(n), goroutines: d.goroutines / int64(n)}
	}
	pm, pb := per(mesh.delta()), per(base.delta())
	rep := &Report{Intro: fmt.Sprintf("%d sidecar nodes connect to the server as in the fan-out section (one mTLS connection and one ADS "+
		"stream each, holding the bundle and identity secrets, clients in a separate process) and stay idle. Per stream: the "+
		"server's growth in RSS (/proc), in Go heap in use and in goroutine stacks (meshca: go_memstats_heap_inuse_bytes and "+
		"go_memstats_stack_inuse_bytes from /metrics; baseline: runtime.MemStats) from before the streams connect to after, each the lowest of five samples over a second, "+
		"divided by %d. No GC is forced in either server. Baseline: the naive go-control-plane server of the fan-out section.", n, n)}
	rep.Rows = append(rep.Rows,
		Row{Figure: fmt.Sprintf("RSS per idle authenticated stream (%d streams)", n), Value: fmtBytes(pm.rss), Baseline: fmtBytes(pb.rss),
			Ratio: ratioOf(pm.rss, pb.rss), Goal: "≤ 64 KiB", Verdict: Judge(pm.rss <= memoryGoal)},
		Row{Figure: fmt.Sprintf("Go heap in use per idle authenticated stream (%d streams)", n), Value: fmtBytes(pm.heap), Baseline: fmtBytes(pb.heap),
			Ratio: ratioOf(pm.heap, pb.heap), Goal: "≤ 64 KiB", Verdict: Judge(pm.heap <= memoryGoal)},
		Row{Figure: "goroutine stacks per idle stream (in RSS, not in the heap)", Value: fmtBytes(pm.stack), Baseline: fmtBytes(pb.stack),
			Ratio: ratioOf(pm.stack, pb.stack)},
		Row{Figure: "goroutines per idle stream", Value: fmt.Sprint(mesh.delta().goroutines / int64(n)), Baseline: fmt.Sprint(base.delta().goroutines / int64(n)),
			Ratio: ratioOf(pm.goroutines, pb.goroutines)},
	)
	rep.Notes = append(rep.Notes, fmt.Sprintf("meshca before → after: RSS %s → %s, heap %s → %s, goroutines %d → %d. Baseline: RSS %s → %s, heap %s → %s, goroutines %d → %d.",
		fmtBytes(mesh.before.rss), fmtBytes(mesh.after.rss), fmtBytes(mesh.before.heap), fmtBytes(mesh.after.heap), mesh.before.goroutines, mesh.after.goroutines,
		fmtBytes(base.before.rss), fmtBytes(base.after.rss), fmtBytes(base.before.heap), fmtBytes(base.after.heap), base.before.goroutines, base.after.goroutines),
		"Where the memory goes: `go test -run TestProfileFanout ./internal/bench -args -fanout.profile DIR` writes a heap profile "+
			"of meshca holding idle streams (heap.pprof); `-fanout.sketch` measures the naive server with a smaller gRPC read buffer.")
	return rep, nil
}

// fanoutCase is a seeded data directory and the files the workers read.
type fanoutCase struct {
	n                                    int
	data, nodesFile, bundleFile, naiveIn string
}

// prepareFanout seeds n nodes (and one identity per ten nodes) under
// env.Dir/name and writes the workers' inputs beside them.
func prepareFanout(ctx context.Context, env *Env, name string, n int) (*fanoutCase, error) {
	return seedCase(ctx, env, name, Seed{Identities: max(1, n/10), Nodes: n}, true)
}

// seedCase seeds s under env.Dir/name and writes the clients' inputs (and
// with naive, the naive server's) beside it.
func seedCase(ctx context.Context, env *Env, name string, s Seed, naive bool) (*fanoutCase, error) {
	dir := filepath.Join(env.Dir, name)
	fc := &fanoutCase{n: s.Nodes, data: filepath.Join(dir, "data"), nodesFile: filepath.Join(dir, "nodes.jsonl"),
		bundleFile: filepath.Join(dir, "bundle.pem")}
	start := time.Now()
	seeded, err := SeedDir(ctx, fc.data, s)
	if err != nil {
		return nil, err
	}
	if err := WriteNodes(fc.nodesFile, seeded.Nodes); err != nil {
		return nil, err
	}
	if err := os.WriteFile(fc.bundleFile, seeded.BundlePEM, 0o600); err != nil {
		return nil, err
	}
	if naive {
		fc.naiveIn = filepath.Join(dir, "naive.json")
		if err := WriteNaiveInput(ctx, fc.data, s.Etcd, seeded.Nodes, fc.naiveIn); err != nil {
			return nil, fmt.Errorf("naive server input: %w", err)
		}
	}
	env.Logf("seeded %d identities on %d nodes in %s", s.Identities, s.Nodes, fmtDur(time.Since(start)))
	return fc, nil
}

// startClients starts the xds-clients worker against addr and waits until
// every stream holds its first response.
func (fc *fanoutCase) startClients(ctx context.Context, env *Env, addr string) (*Proc, time.Duration, error) {
	start := time.Now()
	p, err := StartWorker(ctx, env, "xds-clients", "-nodes", fc.nodesFile, "-bundle", fc.bundleFile, "-addr", addr, "-identity")
	if err != nil {
		return nil, 0, err
	}
	if _, err := p.Expect("ready ", time.Minute+time.Duration(fc.n)*20*time.Millisecond); err != nil {
		p.Stop()
		return nil, 0, fmt.Errorf("clients: %w", err)
	}
	return p, time.Since(start), nil
}

// fanoutResult is one timed bundle change.
type fanoutResult struct {
	last, median time.Duration // from the trigger to the last and the median stream
	trigger      time.Duration // until the trigger returned
	connect      time.Duration // until every stream held its first response
	// CPU time the server and the client process used from the trigger
	// until the last stream had the change.
	serverCPU, clientCPU time.Duration
	responses            int64 // received by all streams meanwhile
	// most is the most responses one stream received up to and with the
	// one that brought it the change: 1 unless it was sent extra pushes.
	most int64
	// counts tells what meshca did from the trigger until the last stream
	// had the change ("" for the baseline).
	counts string
}

// target is the server a change is timed on: its xDS address, its process
// and, for meshca, its admin API (read before and after).
type target struct {
	addr, admin string
	pid         int
}

// bundleChange connects the clients to the server srv, calls trigger and
// waits until every stream holds a bundle with a new root.
func (fc *fanoutCase) bundleChange(ctx context.Context, env *Env, srv target, trigger func() error) (fanoutResult, error) {
	return fc.timeChange(ctx, env, srv, WatchBundle, trigger)
}

// change connects the clients to the server at addr (process serverPid),
// calls trigger and waits until every stream has seen a change of kind
// (WatchBundle, WatchIdentity, WatchAny).
func (fc *fanoutCase) change(ctx context.Context, env *Env, addr string, serverPid int, kind string, trigger func() error) (fanoutResult, error) {
	return fc.timeChange(ctx, env, target{addr: addr, pid: serverPid}, kind, trigger)
}

// timeChange is change on srv, with meshca's counters read around it when
// srv names its admin API.
func (fc *fanoutCase) timeChange(ctx context.Context, env *Env, srv target, kind string, trigger func() error) (fanoutResult, error) {
	var res fanoutResult
	clients, connect, err := fc.startClients(ctx, env, srv.addr)
	if err != nil {
		return res, err
	}
	defer clients.Stop()
	res.connect = connect
	if err := clients.Send("watch " + kind); err != nil {
		return res, err
	}
	if _, err := clients.Expect("armed ", 30*time.Second); err != nil {
		return res, err
	}
	var counts0 serverCounts
	if srv.admin != "" {
		if counts0, err = probeMeshca(ctx, srv.admin); err != nil {
			return res, err
		}
	}
	server0, err1 := cpuOf(srv.pid)
	client0, err2 := cpuOf(clients.Pid())
	if err := errors.Join(err1, err2); err != nil {
		return res, err
	}
	start := time.Now()
	if err := trigger(); err != nil {
		return res, err
	}
	res.trigger = time.Since(start)
	done, err := clients.Expect("done ", 2*time.Minute+time.Duration(fc.n)*10*time.Millisecond)
	if err != nil {
		return res, fmt.Errorf("clients: %w", err)
	}
	server1, err1 := cpuOf(srv.pid)
	client1, err2 := cpuOf(clients.Pid())
	if err := errors.Join(err1, err2); err != nil {
		return res, err
	}
	res.serverCPU, res.clientCPU = server1-server0, client1-client0
	f := fields(done)
	last, err1 := strconv.ParseInt(f["last"], 10, 64)
	median, err2 := strconv.ParseInt(f["p50"], 10, 64)
	responses, err3 := strconv.ParseInt(f["responses"], 10, 64)
	most, err4 := strconv.ParseInt(f["most"], 10, 64)
	if err := errors.Join(err1, err2, err3, err4); err != nil {
		return res, fmt.Errorf("clients said %q: %w", done, err)
	}
	res.last, res.median = time.Unix(0, last).Sub(start), time.Unix(0, median).Sub(start)
	res.responses, res.most = responses, most
	if srv.admin != "" {
		counts1, err := probeMeshca(ctx, srv.admin)
		if err != nil {
			return res, err
		}
		res.counts = counts0.delta(counts1, start, start.Add(res.last))
	}
	return res, nil
}

// meshcaBundleChange starts meshca on the case's data directory and times
// a root rotation reaching every stream.
func (fc *fanoutCase) meshcaBundleChange(ctx context.Context, env *Env, data string) (fanoutResult, error) {
	m, _, err := StartMeshca(ctx, env, data)
	if err != nil {
		return fanoutResult{}, err
	}
	defer m.Stop()
	return fc.bundleChange(ctx, env, target{addr: m.XDS, admin: m.Admin, pid: m.Pid()}, func() error { return rotateRoot(ctx, m.Admin) })
}

// rotateRoot starts a root rotation through the admin API, as
// `meshca ca rotate --root` does.
func rotateRoot(ctx context.Context, admin string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+"/v1/ca/rotate", strings.NewReader(`{"root":true}`))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return fmt.Errorf("rotate root: %s: %s", resp.Status, body)
	}
	return nil
}

// startNaive starts the naive-xds worker, with extra flags, and returns its
// address.
func (fc *fanoutCase) startNaive(ctx context.Context, env *Env, extra ...string) (*Proc, string, error) {
	p, err := StartWorker(ctx, env, "naive-xds", append([]string{"-nodes", fc.nodesFile, "-input", fc.naiveIn}, extra...)...)
	if err != nil {
		return nil, "", err
	}
	addr, err := p.Expect("listening ", time.Minute)
	if err != nil {
		p.Stop()
		return nil, "", err
	}
	return p, addr, nil
}

// naiveBundleChange times the naive server's bundle change.
func (fc *fanoutCase) naiveBundleChange(ctx context.Context, env *Env, extra ...string) (fanoutResult, error) {
	p, addr, err := fc.startNaive(ctx, env, extra...)
	if err != nil {
		return fanoutResult{}, err
	}
	defer p.Stop()
	return fc.bundleChange(ctx, env, target{addr: addr, pid: p.Pid()}, func() error {
		if err := p.Send("change"); err != nil {
			return err
		}
		_, err := p.Expect("changed ", 2*time.Minute)
		return err
	})
}

// memSample is a server's memory at one moment.
type memSample struct {
	rss, heap, stack, goroutines int64
}

// memCost is a server's memory before and after the streams connected.
type memCost struct{ before, after memSample }

func (c memCost) delta() memSample {
	return memSample{rss: c.after.rss - c.before.rss, heap: c.after.heap - c.before.heap, stack: c.after.stack - c.before.stack,
		goroutines: c.after.goroutines - c.before.goroutines}
}

func (c memCost) String() string {
	d := c.delta()
	return fmt.Sprintf("RSS +%s, heap +%s, stacks +%s, goroutines +%d", fmtBytes(d.rss), fmtBytes(d.heap), fmtBytes(d.stack), d.goroutines)
}

// idleCost samples a server's memory, connects the clients, lets them idle
// and samples it again.
func (fc *fanoutCase) idleCost(ctx context.Context, env *Env, addr string, sample func() (memSample, error)) (memCost, error) {
	var c memCost
	// The quick run proves the section works; its figures mean nothing,
	// so it waits a tenth as long.
	wait, gap := 2*time.Second, 250*time.Millisecond
	if env.Quick {
		wait, gap = 200*time.Millisecond, 25*time.Millisecond
	}
	settle := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
			return nil
		}
	}
	if err := settle(); err != nil {
		return c, err
	}
	before, err := lowest(ctx, sample, gap)
	if err != nil {
		return c, err
	}
	clients, _, err := fc.startClients(ctx, env, addr)
	if err != nil {
		return c, err
	}
	defer clients.Stop()
	if err := settle(); err != nil {
		return c, err
	}
	after, err := lowest(ctx, sample, gap)
	if err != nil {
		return c, err
	}
	return memCost{before: before, after: after}, nil
}

// lowest takes five samples, gap apart, and keeps the lowest of each
// figure: heap in use also counts garbage not yet swept.
func lowest(ctx context.Context, sample func() (memSample, error), gap time.Duration) (memSample, error) {
	low := memSample{rss: math.MaxInt64, heap: math.MaxInt64, stack: math.MaxInt64, goroutines: math.MaxInt64}
	for i := 0; i < 5; i++ {
		if i > 0 {
			select {
			case <-ctx.Done():
				return low, ctx.Err()
			case <-time.After(gap):
			}
		}
		s, err := sample()
		if err != nil {
			return low, err
		}
		low = memSample{rss: min(low.rss, s.rss), heap: min(low.heap, s.heap), stack: min(low.stack, s.stack), goroutines: min(low.goroutines, s.goroutines)}
	}
	return low, nil
}

// naiveIdleCost measures the naive server's memory per idle stream.
func (fc *fanoutCase) naiveIdleCost(ctx context.Context, env *Env, extra ...string) (memCost, error) {
	p, addr, err := fc.startNaive(ctx, env, extra...)
	if err != nil {
		return memCost{}, err
	}
	defer p.Stop()
	return fc.idleCost(ctx, env, addr, func() (memSample, error) {
		rss, err := p.RSS()
		if err != nil {
			return memSample{}, err
		}
		if err := p.Send("mem"); err != nil {
			return memSample{}, err
		}
		line, err := p.Expect("mem ", 10*time.Second)
		if err != nil {
			return memSample{}, err
		}
		f := fields(line)
		heap, err1 := strconv.ParseInt(f["heap_inuse"], 10, 64)
		stack, err2 := strconv.ParseInt(f["stack_inuse"], 10, 64)
		gs, err3 := strconv.ParseInt(f["goroutines"], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return memSample{}, fmt.Errorf("naive server said %q: %w", line, err)
		}
		return memSample{rss: rss, heap: heap, stack: stack, goroutines: gs}, nil
	})
}

// meshcaMem reads meshca's RSS and, from its /metrics, its Go heap and
// stacks in use and its goroutines.
func meshcaMem(ctx context.Context, m *Meshca) (memSample, error) {
	rss, err := m.RSS()
	if err != nil {
		return memSample{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+m.Admin+"/metrics", nil)
	if err != nil {
		return memSample{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return memSample{}, err
	}
	defer resp.Body.Close()
	s := memSample{rss: rss, heap: -1, stack: -1, goroutines: -1}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok {
			continue
		}
		switch name {
		case "go_memstats_heap_inuse_bytes", "go_memstats_stack_inuse_bytes", "go_goroutines":
			v, err := strconv.ParseFloat(value, 64)
			if err != nil {
				return s, fmt.Errorf("metric %s: %w", name, err)
			}
			switch name {
			case "go_goroutines":
				s.goroutines = int64(v)
			case "go_memstats_stack_inuse_bytes":
				s.stack = int64(v)
			default:
				s.heap = int64(v)
			}
		}
	}
	if err := sc.Err(); err != nil {
		return s, err
	}
	if s.heap < 0 || s.stack < 0 || s.goroutines < 0 {
		return s, errors.New("meshca's /metrics lacks go_memstats_heap_inuse_bytes, go_memstats_stack_inuse_bytes or go_goroutines")
	}
	return s, nil
}

// medianResult returns the trial whose last stream came in the middle.
func medianResult(rs []fanoutResult) fanoutResult {
	s := slices.Clone(rs)
	slices.SortFunc(s, func(a, b fanoutResult) int { return cmp.Compare(a.last, b.last) })
	return s[len(s)/2]
}

func trialList(rs []fanoutResult) string {
	var out []string
	for _, r := range rs {
		out = append(out, fmtDur(r.last))
	}
	return strings.Join(out, ", ")
}

// copyDir copies the regular files of a data directory (the database and
// the key-encryption key), keeping their modes.
func copyDir(from, to string) error {
	if err := os.MkdirAll(to, 0o700); err != nil {
		return err
	}
	entries, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if !e.Type().IsRegular() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, info.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}

// fields parses "k=v k=v" into a map.
func fields(s string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		if k, v, ok := strings.Cut(f, "="); ok {
			out[k] = v
		}
	}
	return out
}

func ratioOf(a, b int64) float64 {
	if b <= 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// fmtDur formats a duration with three significant digits.
func fmtDur(d time.Duration) string {
	switch {
	case d >= time.Second:
		return fmt.Sprintf("%.3g s", d.Seconds())
	case d >= time.Millisecond:
		return fmt.Sprintf("%.3g ms", float64(d)/float64(time.Millisecond))
	default:
		return fmt.Sprintf("%.3g µs", float64(d)/float64(time.Microsecond))
	}
}

// fmtBytes formats a byte count in KiB or MiB.
func fmtBytes(b int64) string {
	if b >= 10<<20 || b <= -10<<20 {
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%.1f KiB", float64(b)/(1<<10))
}
