package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Workers are the harness's helper processes: the harness binary run again
// with MESHCA_BENCH_WORKER=NAME in its environment (see WorkerFromEnv). A
// worker reads commands as lines on in, writes results as lines on out, and
// returns when in closes or ctx ends. A line "error TEXT" reports a failure.
var Workers = map[string]func(ctx context.Context, args []string, in io.Reader, out io.Writer) error{
	"cfssl-serve":      workCFSSLServe,
	"xds-clients":      workXDSClients,
	"naive-xds":        workNaiveXDS,
	"etcd":             workEtcd,
	"failover-clients": workFailoverClients,
	"storm-agents":     workStormAgents,
}

// workerEnv names the worker a harness process should be.
const workerEnv = "MESHCA_BENCH_WORKER"

// WorkerFromEnv reports whether this process was started as a worker and,
// if so, runs it on stdin and stdout with args. Both cmd/meshca-bench and
// the package's tests call it first.
func WorkerFromEnv(ctx context.Context, args []string) (bool, error) {
	name := os.Getenv(workerEnv)
	if name == "" {
		return false, nil
	}
	w, ok := Workers[name]
	if !ok {
		return true, fmt.Errorf("bench: unknown worker %q", name)
	}
	return true, w(ctx, args, os.Stdin, os.Stdout)
}

// Proc is a child process: a worker or a meshca server.
type Proc struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	lines chan string
	done  chan struct{}
	err   error // valid after done
	mu    sync.Mutex
	tail  []string // last stderr lines, for errors
	term  bool     // Stop sends SIGTERM at once (a server, not a worker)
}

// StartWorker starts the named worker with args.
func StartWorker(ctx context.Context, env *Env, name string, args ...string) (*Proc, error) {
	return start(ctx, env.Self, args, []string{workerEnv + "=" + name})
}

func start(ctx context.Context, path string, args []string, extraEnv []string) (*Proc, error) {
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), extraEnv...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", filepath.Base(path), err)
	}
	p := &Proc{cmd: cmd, stdin: stdin, lines: make(chan string, 1024), done: make(chan struct{})}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stdout)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	go func() {
		defer wg.Done()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			p.mu.Lock()
			p.tail = append(p.tail, sc.Text())
			if len(p.tail) > 20 {
				p.tail = p.tail[1:]
			}
			p.mu.Unlock()
		}
	}()
	go func() {
		wg.Wait()
		p.err = cmd.Wait()
		close(p.lines)
		close(p.done)
	}()
	go func() {
		select {
		case <-ctx.Done():
			p.Kill()
		case <-p.done:
		}
	}()
	return p, nil
}

// Pid is the process ID.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Send writes one line to the process's stdin.
func (p *Proc) Send(line string) error {
	_, err := io.WriteString(p.stdin, line+"\n")
	return err
}

// Expect returns the rest of the first stdout line that starts with prefix,
// skipping others, or an error on timeout or exit. A line starting with
// "error " fails at once.
func (p *Proc) Expect(prefix string, timeout time.Duration) (string, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				<-p.done
				return "", fmt.Errorf("process exited (%v) while waiting for %q: %s", p.err, prefix, p.stderrTail())
			}
			if rest, found := strings.CutPrefix(line, "error "); found {
				return "", errors.New(rest)
			}
			if rest, found := strings.CutPrefix(line, prefix); found {
				return strings.TrimSpace(rest), nil
			}
		case <-t.C:
			return "", fmt.Errorf("no %q from the process within %s: %s", prefix, timeout, p.stderrTail())
		}
	}
}

func (p *Proc) stderrTail() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.tail, " | ")
}

// Stop closes stdin, sends SIGTERM (at once to a server, after a second to
// a worker) and SIGKILL ten seconds later, and waits.
func (p *Proc) Stop() {
	_ = p.stdin.Close()
	if !p.term {
		select {
		case <-p.done:
			return
		case <-time.After(time.Second):
		}
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		p.Kill()
		<-p.done
	}
}

// Kill kills the process.
func (p *Proc) Kill() { _ = p.cmd.Process.Kill() }

// RSS returns the process's resident set size in bytes (Linux).
func (p *Proc) RSS() (int64, error) { return rssOf(p.Pid()) }

func rssOf(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
			return kb << 10, err
		}
	}
	return 0, errors.New("no VmRSS")
}

// Meshca is a running meshca server.
type Meshca struct {
	*Proc
	DataDir string
	Admin   string // host:port of the admin API
	XDS     string // host:port of the xDS server
}

// FreeAddr returns a loopback address with a free port.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// StartMeshca starts `meshca server` on dataDir with loopback ports and
// waits until /readyz answers 200. It returns the time that took.
func StartMeshca(ctx context.Context, env *Env, dataDir string, extra ...string) (*Meshca, time.Duration, error) {
	if env.Meshca == "" {
		return nil, 0, errors.New("bench: the meshca binary is needed (-meshca)")
	}
	admin, err := FreeAddr()
	if err != nil {
		return nil, 0, err
	}
	xds, err := FreeAddr()
	if err != nil {
		return nil, 0, err
	}
	args := append([]string{"server", "--data-dir", dataDir, "--admin-listen", admin, "--xds-listen", xds, "--log-level", "warn"}, extra...)
	begin := time.Now()
	p, err := start(ctx, env.Meshca, args, nil)
	if err != nil {
		return nil, 0, err
	}
	m := &Meshca{Proc: p, DataDir: dataDir, Admin: admin, XDS: xds}
	p.term = true
	client := &http.Client{Timeout: time.Second}
	for {
		if resp, err := client.Get("http://" + admin + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m, time.Since(begin), nil
			}
		}
		select {
		case <-p.done:
			return nil, 0, fmt.Errorf("meshca exited before it was ready (%v): %s", p.err, p.stderrTail())
		case <-ctx.Done():
			p.Kill()
			return nil, 0, ctx.Err()
		case <-time.After(2 * time.Millisecond):
		}
		if time.Since(begin) > 5*time.Minute {
			p.Kill()
			return nil, 0, fmt.Errorf("meshca not ready after 5m: %s", p.stderrTail())
		}
	}
}
