package app_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// signProfile, when set, names the prefix of a CPU profile written for
// each measured phase of BenchmarkSignCSRThroughGRPC (prefix-grpc-1.out,
// ...): the server's work alone, since the agents run in another process.
var signProfile = flag.String("signcsr.cpuprofile", "", "BenchmarkSignCSRThroughGRPC: write a CPU profile per phase with this path prefix")

// signNodes is how many agent nodes share BenchmarkSignCSRThroughGRPC's
// identities (at most b.N).
var signNodes = flag.Int("signcsr.nodes", 20, "BenchmarkSignCSRThroughGRPC: agent nodes sharing the b.N identities")

// signClientMode runs the agents of BenchmarkSignCSRThroughGRPC in a child
// process (see TestMain).
const signClientMode = "signcsr-clients"

// signWorkers is how many in-process callers sign at once: the xDS
// server's bound on CSRs signing (xds.DefaultMaxSigning).
const signWorkers = 32

// agentsInFlight is each agent's bound on its CSRs at meshca
// (internal/agent).
const agentsInFlight = 4

// BenchmarkSignCSRThroughGRPC measures meshca's CPU per certificate for an
// agent CSR as a storm drives it, beside the server-generated path and the
// same SignCSR called in-process, in one meshca and one run: agent nodes
// joined for real, each on its own mTLS connection over loopback with its
// identity watch open, send SignCSR calls (at most 4 at once each, as the
// agent does) from a child process, so that the process CPU measured here
// (getrusage) is the server's alone. The server-key path is ReissueIdentity
// of the same identities (key made by meshca, signed, linted, sealed,
// committed with its audit record), the in-process path registry.SignCSR
// with CSRs made beforehand; both with 32 callers, the xDS server's bound
// on CSRs signing at once. Each phase signs every identity once, in the
// order gRPC, server key, in-process, in-process, server key, gRPC.
//
//	go test -run '^$' -bench SignCSRThroughGRPC -benchtime 1000x ./internal/app
//
// b.N certificates per phase (20 nodes sharing them, or -signcsr.nodes);
// add -signcsr.cpuprofile=/tmp/sign for a CPU profile of each phase.
func BenchmarkSignCSRThroughGRPC(b *testing.B) {
	nodes := max(1, min(*signNodes, b.N))
	per := (b.N + nodes - 1) / nodes
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	dir := b.TempDir()
	// meshca logs each certificate: format the lines, as it does, and drop them.
	logger := slog.New(slog.NewTextHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	a, err := app.Start(ctx, testkit.LoopbackConfig(filepath.Join(dir, "data")), logger)
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Wait(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("meshca stopped with: %v", err)
		}
	}()
	reg := app.RegistryOf(a)

	spec := signClientSpec{Addr: a.XDS}
	var holders []signHolder
	var idents []string
	for i := range nodes {
		node := signNode{Name: fmt.Sprintf("agent-%d", i)}
		for j := range per {
			node.Identities = append(node.Identities, fmt.Sprintf("svc-%d-%d", i, j))
		}
		idents = append(idents, node.Identities...)
		spec.Nodes = append(spec.Nodes, node)
	}
	if err := runParallel(signWorkers, len(idents), func(i int) error {
		_, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: idents[i]}, "bench")
		return err
	}); err != nil {
		b.Fatal(err)
	}
	for i := range spec.Nodes {
		n := &spec.Nodes[i]
		_, tok, err := reg.AddNode(ctx, registry.AddNode{Name: n.Name, Identities: n.Identities, Agent: true}, "bench")
		if err != nil {
			b.Fatal(err)
		}
		key, csr := agentCSRb(b)
		j, err := reg.Join(ctx, n.Name, tok.Token, csr, "bench")
		if err != nil {
			b.Fatal(err)
		}
		n.ChainPEM, n.KeyPEM = string(j.ChainPEM), string(testkit.KeyPEM(b, key))
		spec.BundlePEM = string(j.BundlePEM)
		leaf := testkit.ParseCertPEM(b, j.ChainPEM)
		for _, id := range n.Identities {
			holders = append(holders, signHolder{node: n.Name, cert: leaf, ident: id})
		}
	}
	// The in-process CSRs, made before the clock starts as the node makes
	// them.
	csrs := make([][]byte, 2*len(holders))
	for i := range csrs {
		_, csrs[i] = agentCSRb(b)
	}

	clients := startSignClients(b, dir, spec)
	var next atomic.Int64
	inProcess := func(i int) error {
		h := holders[i]
		_, err := reg.SignCSR(ctx, h.node, h.cert, h.ident, csrs[next.Add(1)-1])
		return err
	}
	serverKey := func(i int) error {
		_, err := reg.ReissueIdentity(ctx, idents[i], "bench")
		return err
	}
	// One agent certificate that stays on the previous CA keeps a
	// rotation waiting in phase reissuing, as in a storm, for the second
	// half of the phases.
	pinCert := signPin(b, reg)
	paths := map[string]func() error{
		"grpc":      clients.phase,
		"serverkey": func() error { return runParallel(signWorkers, len(idents), serverKey) },
		"inprocess": func() error { return runParallel(signWorkers, len(holders), inProcess) },
	}
	got := map[string]*signMeasured{}
	b.ResetTimer()
	for _, phase := range []string{"calm/grpc", "calm/serverkey", "calm/inprocess", "rotate", "rotating/inprocess", "rotating/serverkey", "rotating/grpc"} {
		if phase == "rotate" {
			b.StopTimer()
			startRotation(b, a.Admin, pinCert)
			b.StartTimer()
			continue
		}
		m, err := measureSign(b, strings.ReplaceAll(phase, "/", "-"), len(holders), paths[phase[strings.Index(phase, "/")+1:]])
		if err != nil {
			b.Fatalf("phase %s: %v", phase, err)
		}
		for _, key := range []string{phase, phase[strings.Index(phase, "/")+1:]} {
			if got[key] == nil {
				got[key] = &signMeasured{}
			}
			got[key].add(m)
		}
	}
	b.StopTimer()
	watchMsgs, refused := clients.stop()

	viaGRPC, viaServerKey, viaInProcess := *got["grpc"], *got["serverkey"], *got["inprocess"]
	b.ReportMetric(micros(viaGRPC.cpuPer()), "grpc_cpu_us/cert")
	b.ReportMetric(micros(viaInProcess.cpuPer()), "inprocess_cpu_us/cert")
	b.ReportMetric(micros(viaServerKey.cpuPer()), "server_key_cpu_us/cert")
	b.ReportMetric(float64(viaGRPC.cpuPer())/float64(viaServerKey.cpuPer()), "grpc_cpu_ratio")
	b.ReportMetric(float64(viaInProcess.cpuPer())/float64(viaServerKey.cpuPer()), "inprocess_cpu_ratio")
	b.ReportMetric(viaGRPC.rate(), "grpc_certs/s")
	b.ReportMetric(viaInProcess.rate(), "inprocess_certs/s")
	b.ReportMetric(viaServerKey.rate(), "server_key_certs/s")
	for _, cond := range []string{"calm", "rotating"} {
		g, k, i := *got[cond+"/grpc"], *got[cond+"/serverkey"], *got[cond+"/inprocess"]
		b.Logf("%s: %d agent nodes × %d identities; server CPU per certificate: gRPC %v, in-process SignCSR %v, server key %v (gRPC / server key %.2f, in-process / server key %.2f, gRPC's own share %v); certificates/s gRPC %.0f, in-process %.0f, server key %.0f",
			cond, nodes, per, g.cpuPer(), i.cpuPer(), k.cpuPer(),
			float64(g.cpuPer())/float64(k.cpuPer()), float64(i.cpuPer())/float64(k.cpuPer()), g.cpuPer()-i.cpuPer(),
			g.rate(), i.rate(), k.rate())
	}
	b.Logf("both: server CPU per certificate gRPC %v, in-process %v, server key %v (%.2f, %.2f); %d identity-watch messages, %d CSRs refused as beyond the queue and sent again",
		viaGRPC.cpuPer(), viaInProcess.cpuPer(), viaServerKey.cpuPer(),
		float64(viaGRPC.cpuPer())/float64(viaServerKey.cpuPer()), float64(viaInProcess.cpuPer())/float64(viaServerKey.cpuPer()), watchMsgs, refused)
}

// signPin adds an agent node holding one identity of its own, and has
// its certificate signed now: a rotation then waits for that node.
func signPin(b *testing.B, reg *registry.Registry) string {
	b.Helper()
	ctx := context.Background()
	if _, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: "svc-pin"}, "bench"); err != nil {
		b.Fatal(err)
	}
	_, tok, err := reg.AddNode(ctx, registry.AddNode{Name: "agent-pin", Identities: []string{"svc-pin"}, Agent: true}, "bench")
	if err != nil {
		b.Fatal(err)
	}
	_, csr := agentCSRb(b)
	j, err := reg.Join(ctx, "agent-pin", tok.Token, csr, "bench")
	if err != nil {
		b.Fatal(err)
	}
	_, csr = agentCSRb(b)
	signed, err := reg.SignCSR(ctx, "agent-pin", testkit.ParseCertPEM(b, j.ChainPEM), "svc-pin", csr)
	if err != nil {
		b.Fatal(err)
	}
	return signed.Serial
}

// startRotation starts an intermediate CA rotation through the admin API
// and waits, up to 2 minutes, until it has re-keyed meshca's own leaves
// and waits for the agents (pin, an agent certificate, still on the
// previous CA).
func startRotation(b *testing.B, adminAddr, pin string) {
	b.Helper()
	hc := &http.Client{Timeout: 30 * time.Second}
	body, _ := json.Marshal(api.RotateCARequest{})
	resp, err := hc.Post("http://"+adminAddr+api.PathCARotate, "application/json", bytes.NewReader(body))
	if err != nil {
		b.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode >= 300 {
		b.Fatalf("rotate: %d %s", resp.StatusCode, data)
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(2 * time.Minute)
	for {
		resp, err := hc.Get("http://" + adminAddr + api.PathCA)
		if err != nil {
			b.Fatal(err)
		}
		var ca api.CA
		err = json.NewDecoder(resp.Body).Decode(&ca)
		resp.Body.Close()
		if err != nil {
			b.Fatal(err)
		}
		if r := ca.Rotation; r != nil && r.Leaves > 0 && r.Reissued+r.ReissueFailed >= r.Leaves && r.OldAgentCerts > 0 {
			return
		}
		select {
		case <-tick.C:
		case <-deadline:
			b.Fatalf("rotation has not re-keyed meshca's leaves after 2 minutes (agent certificate %s still on the previous CA): %+v", pin, ca.Rotation)
		}
	}
}

type signHolder struct {
	node, ident string
	cert        *x509.Certificate
}

// signMeasured sums the phases of one path.
type signMeasured struct {
	n         int
	wall, cpu time.Duration
}

func (m *signMeasured) add(o signMeasured) { m.n, m.wall, m.cpu = m.n+o.n, m.wall+o.wall, m.cpu+o.cpu }
func (m signMeasured) rate() float64       { return float64(m.n) / m.wall.Seconds() }
func (m signMeasured) cpuPer() time.Duration {
	return (m.cpu / time.Duration(max(m.n, 1))).Round(time.Microsecond)
}

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// measureSign runs one phase of n certificates and takes this process's
// CPU (user + system) and wall time, with a CPU profile when asked.
func measureSign(b *testing.B, name string, n int, run func() error) (signMeasured, error) {
	if *signProfile != "" {
		f, err := os.Create(*signProfile + "-" + name + ".out")
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			b.Fatal(err)
		}
		defer pprof.StopCPUProfile()
	}
	cpu0, start := processCPU(b), time.Now()
	err := run()
	return signMeasured{n: n, wall: time.Since(start), cpu: processCPU(b) - cpu0}, err
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runParallel calls op(0..n-1) on workers goroutines; the first error
// stops the rest.
func runParallel(workers, n int, op func(int) error) error {
	var (
		next     atomic.Int64
		firstErr atomic.Pointer[error]
		wg       sync.WaitGroup
	)
	for range workers {
		wg.Go(func() {
			for firstErr.Load() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := op(i); err != nil {
					firstErr.CompareAndSwap(nil, &err)
				}
			}
		})
	}
	wg.Wait()
	if p := firstErr.Load(); p != nil {
		return *p
	}
	return nil
}

func agentCSRb(b *testing.B) (key any, csrDER []byte) {
	k, p := testkit.NewCSR(b)
	blk, _ := pem.Decode([]byte(p))
	return k, blk.Bytes
}

// signClientSpec is what the child process needs: where meshca listens,
// what to trust, and each agent node's credential and identities. It is
// written 0600 in the benchmark's temp directory.
type signClientSpec struct {
	Addr      string     `json:"addr"`
	BundlePEM string     `json:"bundle_pem"`
	Nodes     []signNode `json:"nodes"`
}

type signNode struct {
	Name       string   `json:"name"`
	ChainPEM   string   `json:"chain_pem"`
	KeyPEM     string   `json:"key_pem"`
	Identities []string `json:"identities"`
}

// signClients drives the child process: a line on its stdin starts a
// phase, and its answer line ends it.
type signClients struct {
	b     *testing.B
	cmd   *exec.Cmd
	in    io.WriteCloser
	out   *bufio.Scanner
	phase func() error
}

func startSignClients(b *testing.B, dir string, spec signClientSpec) *signClients {
	b.Helper()
	path := filepath.Join(dir, "clients.json")
	data, _ := json.Marshal(spec)
	if err := os.WriteFile(path, data, 0o600); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), attackEnv+"="+signClientMode, attackAddrEnv+"="+path)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	c := &signClients{b: b, cmd: cmd, in: in, out: bufio.NewScanner(outPipe)}
	b.Cleanup(func() { c.stop() })
	if line, err := c.read(); err != nil || line != "ready" {
		b.Fatalf("agents' process: %q, %v", line, err)
	}
	c.phase = func() error {
		if _, err := io.WriteString(c.in, "go\n"); err != nil {
			return err
		}
		line, err := c.read()
		if err != nil {
			return err
		}
		if line != "ok" {
			return errors.New(line)
		}
		return nil
	}
	return c
}

// read is the child's next line; it gives up after 5 minutes.
func (c *signClients) read() (string, error) {
	got := make(chan bool, 1)
	go func() { got <- c.out.Scan() }()
	select {
	case ok := <-got:
		if !ok {
			return "", fmt.Errorf("agents' process ended: %v", c.out.Err())
		}
		return c.out.Text(), nil
	case <-time.After(5 * time.Minute):
		return "", errors.New("agents' process did not answer within 5 minutes")
	}
}

// stop ends the child and returns the identity-watch messages it had
// and the CSRs it sent again after a refusal; later calls return 0.
func (c *signClients) stop() (watchMsgs, refused int) {
	if c.in == nil {
		return 0, 0
	}
	in := c.in
	c.in = nil
	_, _ = io.WriteString(in, "stop\n")
	line, _ := c.read()
	in.Close()
	_ = c.cmd.Wait()
	_, _ = fmt.Sscanf(line, "watch %d refused %d", &watchMsgs, &refused)
	return watchMsgs, refused
}

// signClientsMain is the child process: one mTLS connection per agent node
// with its identity watch open; each "go" line signs one CSR per identity
// of every node, at most 4 in flight per node (one refused as beyond the
// queue is sent again after a backoff), and answers "ok" or the first
// error; "stop" answers the counts of identity-watch messages and of
// refusals.
func signClientsMain(path string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec signClientSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		return err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(spec.BundlePEM)) {
		return errors.New("empty bundle")
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var watchMsgs, refusals atomic.Int64
	conns := make([]*grpc.ClientConn, len(spec.Nodes))
	for i, n := range spec.Nodes {
		cert, err := tls.X509KeyPair([]byte(n.ChainPEM), []byte(n.KeyPEM))
		if err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		conn, err := grpc.NewClient(spec.Addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, ServerName: "localhost", Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12,
		})), grpc.WithDefaultCallOptions(grpc.ForceCodec(nodeapi.Codec{})))
		if err != nil {
			return err
		}
		defer conn.Close()
		conns[i] = conn
		st, err := conn.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, nodeapi.FullWatchIdentitiesMethod)
		if err != nil {
			return fmt.Errorf("node %s: watch: %w", n.Name, err)
		}
		if err := st.SendMsg(&nodeapi.IdentitiesRequest{}); err != nil {
			return fmt.Errorf("node %s: watch: %w", n.Name, err)
		}
		if err := st.CloseSend(); err != nil {
			return err
		}
		var first nodeapi.IdentitiesResponse
		if err := st.RecvMsg(&first); err != nil {
			return fmt.Errorf("node %s: watch: %w", n.Name, err)
		}
		if len(first.Identities) != len(n.Identities) {
			return fmt.Errorf("node %s: watch lists %d identities, want %d", n.Name, len(first.Identities), len(n.Identities))
		}
		go func() {
			for {
				var r nodeapi.IdentitiesResponse
				if st.RecvMsg(&r) != nil {
					return
				}
				watchMsgs.Add(1)
			}
		}()
	}
	// The CSRs of each phase are made before it starts, as the agents
	// make theirs before they call.
	makeCSRs := func() ([][][]byte, error) {
		csrs := make([][][]byte, len(spec.Nodes))
		for i, n := range spec.Nodes {
			for range n.Identities {
				_, der, err := newCSRDER()
				if err != nil {
					return nil, err
				}
				csrs[i] = append(csrs[i], der)
			}
		}
		return csrs, nil
	}
	csrs, err := makeCSRs()
	if err != nil {
		return err
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "stop" {
			fmt.Printf("watch %d refused %d\n", watchMsgs.Load(), refusals.Load())
			return nil
		}
		var (
			wg       sync.WaitGroup
			firstErr atomic.Pointer[error]
		)
		for i, n := range spec.Nodes {
			for w := range agentsInFlight {
				wg.Go(func() {
					for k := w; k < len(n.Identities); k += agentsInFlight {
						var (
							resp nodeapi.SignResponse
							err  error
						)
						// A CSR refused as beyond meshca's queue is sent
						// again after a jittered backoff, as the agent does
						// (from 1 s, doubling).
						giveUp := time.Now().Add(2 * time.Minute)
						for step := time.Second; ; step *= 2 {
							cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
							err = conns[i].Invoke(cctx, nodeapi.FullSignMethod, &nodeapi.SignRequest{Identity: n.Identities[k], CSR: csrs[i][k]}, &resp)
							ccancel()
							if status.Code(err) != codes.ResourceExhausted || time.Now().After(giveUp) {
								break
							}
							refusals.Add(1)
							<-time.After(step/2 + mrand.N(step/2))
						}
						if err == nil && (resp.Identity != n.Identities[k] || !strings.Contains(resp.ChainPEM, "CERTIFICATE")) {
							err = fmt.Errorf("answer for %s names %s", n.Identities[k], resp.Identity)
						}
						if err != nil {
							err = fmt.Errorf("node %s identity %s: %w", n.Name, n.Identities[k], err)
							firstErr.CompareAndSwap(nil, &err)
							return
						}
					}
				})
			}
		}
		wg.Wait()
		if csrs, err = makeCSRs(); err != nil {
			return err
		}
		if p := firstErr.Load(); p != nil {
			fmt.Println(strings.ReplaceAll((*p).Error(), "\n", " "))
		} else {
			fmt.Println("ok")
		}
	}
	return in.Err()
}

// newCSRDER is a P-256 key and a DER CSR signed by it, as an agent makes
// them.
func newCSRDER() (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	return key, der, err
}
