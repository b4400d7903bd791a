package bench

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/testkit"
)

var (
	profileDir   = flag.String("fanout.profile", "", "write CPU and heap profiles of an in-process meshca during the fan-out to this directory")
	profileNodes = flag.Int("fanout.nodes", 10000, "streams for -fanout.profile and -fanout.sketch")
	sketch       = flag.Bool("fanout.sketch", false, "measure the naive server's design variants")
	profileNaive = flag.String("fanout.naive", "", "profile the naive server with these -secrets instead of meshca")
	profileStorm = flag.Bool("fanout.storm", false, "profile a rotation storm (reissue --all, one identity per node) instead of a bundle change")
	// Trials after the first each start meshca again on a fresh copy of
	// the seeded data directory, as the fan-out section does.
	profileTrials = flag.Int("fanout.trials", 1, "bundle changes to profile, each on a fresh copy of the data directory (cpu-N.pprof after the first)")
)

// TestProfileFanout runs meshca (or with -fanout.naive snapshot|linear the
// naive server) in this process, connects the xds-clients worker's streams
// to it, and profiles a bundle change reaching them all (cpu.pprof) and the
// idle streams before it (heap.pprof). With -fanout.trials N it repeats
// the change on fresh copies of the data directory (cpu-1.pprof, ...),
// logging each trial's CPU, garbage collections and allocations, to tell
// trials apart. It runs only with -fanout.profile:
//
//	go test -run TestProfileFanout ./internal/bench -args -fanout.profile /tmp/prof
//	go tool pprof -top /tmp/prof/cpu.pprof
func TestProfileFanout(t *testing.T) {
	if *profileDir == "" {
		t.Skip("profiles only with -fanout.profile DIR")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(5+5*max(1, *profileTrials))*time.Minute)
	defer cancel()
	env := testEnv(t, os.Stderr)
	prepare, watch := prepareFanout, WatchBundle
	if *profileStorm {
		prepare, watch = prepareStorm, WatchIdentity
	}
	fc, err := prepare(ctx, env, "data", *profileNodes)
	if err != nil {
		t.Fatal(err)
	}
	for trial := range max(1, *profileTrials) {
		name := "cpu.pprof"
		if trial > 0 {
			name = fmt.Sprintf("cpu-%d.pprof", trial)
		}
		data := filepath.Join(env.Dir, fmt.Sprintf("trial%d", trial))
		if err := copyDir(fc.data, data); err != nil {
			t.Fatal(err)
		}
		profileTrial(ctx, t, env, fc, data, name, watch, trial == 0)
	}
}

// profileTrial starts the server on data, connects the clients and
// profiles one change into name; with heap it writes heap.pprof of the
// idle streams first. It logs the process's CPU, garbage collections and
// allocations meanwhile.
func profileTrial(ctx context.Context, t *testing.T, env *Env, fc *fanoutCase, data, name, watch string, heap bool) {
	t.Helper()
	addr, trigger, stop, err := profiledServer(ctx, fc, data)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()

	clients, _, err := fc.startClients(ctx, env, addr)
	if err != nil {
		t.Fatal(err)
	}
	defer clients.Stop()
	if heap {
		runtime.GC()
		write(t, "heap.pprof", func(f *os.File) error { return pprof.Lookup("heap").WriteTo(f, 0) })
	}

	if err := clients.Send("watch " + watch); err != nil {
		t.Fatal(err)
	}
	if _, err := clients.Expect("armed ", 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(*profileDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cpu, err := os.Create(filepath.Join(*profileDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer cpu.Close()
	var ms0, ms1 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0, err := cpuOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if err := pprof.StartCPUProfile(cpu); err != nil {
		t.Fatal(err)
	}
	// Contention during the change: mutex.pprof accumulates over trials
	// (compare two with pprof -base).
	runtime.SetMutexProfileFraction(5)
	start := time.Now()
	if err := trigger(); err != nil {
		pprof.StopCPUProfile()
		t.Fatal(err)
	}
	call := time.Since(start)
	done, err := clients.Expect("done ", 5*time.Minute)
	took := time.Since(start)
	pprof.StopCPUProfile()
	runtime.SetMutexProfileFraction(0)
	if err != nil {
		t.Fatal(err)
	}
	write(t, strings.Replace(name, "cpu", "mutex", 1), func(f *os.File) error { return pprof.Lookup("mutex").WriteTo(f, 0) })
	cpu1, err := cpuOf(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&ms1)
	f := fields(done)
	t.Logf("%s, %d streams: trigger returned after %s, last stream by %s; %s responses, at most %s per stream until it had the change; "+
		"process CPU %s, GC cycles +%d (heap goal %d → %d MiB), allocated +%d MiB",
		name, fc.n, call, took, f["responses"], f["most"], fmtDur(cpu1-cpu0), ms1.NumGC-ms0.NumGC, ms0.NextGC>>20, ms1.NextGC>>20,
		(ms1.TotalAlloc-ms0.TotalAlloc)>>20)
}

// TestSketchFanout measures, on the fan-out harness, the two changes the
// fan-out and memory figures point at, on the naive go-control-plane
// server: every secret in one LinearCache shared by all nodes instead of a
// snapshot per node, and a smaller gRPC read buffer per connection. It runs
// only with -fanout.sketch.
func TestSketchFanout(t *testing.T) {
	if !*sketch {
		t.Skip("sketches only with -fanout.sketch")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	env := testEnv(t, os.Stderr)
	fc, err := prepareFanout(ctx, env, "data", *profileNodes)
	if err != nil {
		t.Fatal(err)
	}
	for _, secrets := range []string{"snapshot", "linear"} {
		res, err := fc.naiveBundleChange(ctx, env, "-secrets", secrets)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%d streams, -secrets %s: last stream %s, median %s, publish %s", fc.n, secrets, fmtDur(res.last), fmtDur(res.median), fmtDur(res.trigger))
	}
	for _, buf := range []string{"0", "4096"} {
		c, err := fc.naiveIdleCost(ctx, env, "-read-buffer", buf)
		if err != nil {
			t.Fatal(err)
		}
		d := c.delta()
		t.Logf("%d idle streams, -read-buffer %s: per stream RSS %s, heap %s, stacks %s", fc.n, buf,
			fmtBytes(d.rss/int64(fc.n)), fmtBytes(d.heap/int64(fc.n)), fmtBytes(d.stack/int64(fc.n)))
	}
}

// profiledServer starts meshca, or with -fanout.naive the naive server, in
// this process and returns its xDS address and how to change its bundle.
func profiledServer(ctx context.Context, fc *fanoutCase, data string) (addr string, trigger func() error, stop func(), err error) {
	ctx, cancel := context.WithCancel(ctx)
	if *profileNaive != "" {
		in, toWorker := io.Pipe()
		fromWorker, out := io.Pipe()
		p := &Proc{lines: make(chan string, 1024), done: make(chan struct{})}
		go func() {
			p.err = workNaiveXDS(ctx, []string{"-nodes", fc.nodesFile, "-input", fc.naiveIn, "-secrets", *profileNaive}, in, out)
			out.Close()
		}()
		go func() {
			sc := bufio.NewScanner(fromWorker)
			for sc.Scan() {
				p.lines <- sc.Text()
			}
			close(p.lines)
			close(p.done)
		}()
		stop := func() { toWorker.Close(); cancel(); <-p.done }
		addr, err := p.Expect("listening ", time.Minute)
		if err != nil {
			stop()
			return "", nil, nil, err
		}
		return addr, func() error {
			if _, err := io.WriteString(toWorker, "change\n"); err != nil {
				return err
			}
			_, err := p.Expect("changed ", 2*time.Minute)
			return err
		}, stop, nil
	}
	a, err := app.Start(ctx, testkit.LoopbackConfig(data), slog.New(slog.DiscardHandler))
	if err != nil {
		cancel()
		return "", nil, nil, err
	}
	done := make(chan error, 1)
	go func() { done <- a.Wait(ctx) }()
	trigger = func() error { return rotateRoot(ctx, a.Admin) }
	if *profileStorm {
		trigger = func() error { _, err := reissueAll(ctx, a.Admin); return err }
	}
	return a.XDS, trigger, func() { cancel(); <-done }, nil
}

func write(t *testing.T, name string, fn func(*os.File) error) {
	t.Helper()
	if err := os.MkdirAll(*profileDir, 0o755); err != nil {
		t.Fatal(err)
	}
	f, err := os.Create(filepath.Join(*profileDir, name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := fn(f); err != nil {
		t.Fatal(err)
	}
}
