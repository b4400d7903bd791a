package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/nodeapi"
)

// workStormAgents is the storm-agents worker: the agents of the agent
// storm, one agent.Agent per node of a WriteNodes file, each with its own
// mTLS connection to meshca (-xds) and its own SDS socket under -dir, all
// in this process, apart from the harness and from meshca, so that the
// CPU of each is measured alone. The agents ask for their identities when
// they start and then only when woken (a CRL change): the identity poll
// is an hour and the identity watch is refused (noIdentityWatch).
//
// It prints "ready N" once the agents are made (none runs yet). Then:
//
//	coldstart B  runs the agents B at a time, each batch once the previous
//	             one holds all its -per certificates, and answers
//	             "coldstart NS FAILED": how long that took and the failed
//	             calls so far.
//	mark         notes what every agent holds now ("marked").
//	count ISSUER answers "count N": the certificates the agents hold from
//	             ISSUER.
//	failures     answers "failures N DEADLINE": the agents' failed calls
//	             so far, and of those the ones past their deadline.
//	watch ISSUER answers "watching", then, once every agent holds for each
//	             identity noted by mark a certificate from ISSUER for a new
//	             key and its SDS socket serves them (or stormBound passed),
//	             "rekeyed JSON" (stormTimes: Unix times in nanoseconds).
//
// Closing stdin stops the agents and the worker.
func workStormAgents(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("storm-agents", flag.ContinueOnError)
	nodesFile := fs.String("nodes", "", "agent nodes (WriteNodes JSON lines)")
	bundleFile := fs.String("bundle", "", "PEM roots to verify meshca with")
	xds := fs.String("xds", "", "meshca's xDS address HOST:PORT")
	dir := fs.String("dir", "", "directory for the SDS sockets")
	perAgent := fs.Int("per", 0, "identities each agent holds")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodesFile == "" || *bundleFile == "" || *xds == "" || *dir == "" || *perAgent < 1 {
		return errors.New("storm-agents: -nodes, -bundle, -xds, -dir and -per are required")
	}
	nodes, roots, err := readClientInputs("storm-agents", *nodesFile, *bundleFile)
	if err != nil {
		return err
	}
	ctx, cmds := commands(ctx, in)
	o := &lines{w: out}
	f, err := startAgents(ctx, *dir, *xds, nodes, roots)
	if err != nil {
		o.Printf("error %v", err)
		return err
	}
	defer f.stop()
	o.Printf("ready %d", len(nodes))
	var marked []agent.State
	for {
		select {
		case <-ctx.Done():
			return nil
		case cmd := <-cmds:
			verb, arg, _ := strings.Cut(cmd, " ")
			switch verb {
			case "coldstart":
				batch, err := strconv.Atoi(arg)
				if err != nil || batch < 1 {
					o.Printf("error coldstart: batch %q", arg)
					continue
				}
				took, err := f.coldStart(ctx, batch, *perAgent)
				if err != nil {
					o.Printf("error %v", err)
					continue
				}
				o.Printf("coldstart %d %d", took.Nanoseconds(), f.failures.Load())
			case "mark":
				marked = f.snapshot()
				o.Printf("marked")
			case "count":
				o.Printf("count %d", f.rekeyedBy(arg))
			case "failures":
				o.Printf("failures %d %d", f.failures.Load(), f.deadline.Load())
			case "watch":
				if marked == nil {
					o.Printf("error watch before mark")
					continue
				}
				w := f.watchRekey(ctx, arg, marked)
				o.Printf("watching")
				go func() {
					b, _ := json.Marshal(w.collect())
					o.Printf("rekeyed %s", b)
				}()
			default:
				o.Printf("error unknown command %q", cmd)
			}
		}
	}
}

// stormAgents is the parent's handle on a storm-agents worker.
type stormAgents struct{ *Proc }

// startStormAgents starts the storm-agents worker for the seeded agent
// nodes, on meshca's xDS address, and waits until its agents are made.
func startStormAgents(ctx context.Context, env *Env, xdsAddr string, seeded *Seeded, perAgent int) (*stormAgents, error) {
	nodesFile, bundleFile := filepath.Join(env.Dir, "agents.jsonl"), filepath.Join(env.Dir, "bundle.pem")
	if err := WriteNodes(nodesFile, seeded.Nodes); err != nil {
		return nil, err
	}
	if err := os.WriteFile(bundleFile, seeded.BundlePEM, 0o600); err != nil {
		return nil, err
	}
	p, err := StartWorker(ctx, env, "storm-agents", "-nodes", nodesFile, "-bundle", bundleFile, "-xds", xdsAddr,
		"-dir", filepath.Join(env.Dir, "s"), "-per", strconv.Itoa(perAgent))
	if err != nil {
		return nil, err
	}
	if _, err := p.Expect("ready ", time.Minute); err != nil {
		p.Stop()
		return nil, fmt.Errorf("storm agents: %w", err)
	}
	return &stormAgents{p}, nil
}

// call sends cmd and returns the fields of the answer starting with
// prefix.
func (s *stormAgents) call(cmd, prefix string, timeout time.Duration) ([]string, error) {
	if err := s.Send(cmd); err != nil {
		return nil, err
	}
	rest, err := s.Expect(prefix, timeout)
	if err != nil {
		return nil, fmt.Errorf("storm agents: %s: %w", cmd, err)
	}
	return strings.Fields(rest), nil
}

// ints parses every field as an int64.
func ints(fields []string, want int) ([]int64, error) {
	if len(fields) != want {
		return nil, fmt.Errorf("storm agents: %d fields in %q, want %d", len(fields), fields, want)
	}
	out := make([]int64, want)
	for i, f := range fields {
		v, err := strconv.ParseInt(f, 10, 64)
		if err != nil {
			return nil, fmt.Errorf("storm agents: %w", err)
		}
		out[i] = v
	}
	return out, nil
}

// coldStart runs the agents batch at a time and returns how long it took
// until all held their certificates.
func (s *stormAgents) coldStart(batch int) (time.Duration, error) {
	f, err := s.call("coldstart "+strconv.Itoa(batch), "coldstart ", 30*time.Minute)
	if err != nil {
		return 0, err
	}
	v, err := ints(f, 2)
	if err != nil {
		return 0, err
	}
	return time.Duration(v[0]), nil
}

func (s *stormAgents) mark() error {
	_, err := s.call("mark", "marked", time.Minute)
	return err
}

// rekeyedBy counts the certificates the agents hold from issuer.
func (s *stormAgents) rekeyedBy(issuer string) (int, error) {
	f, err := s.call("count "+issuer, "count ", time.Minute)
	if err != nil {
		return 0, err
	}
	v, err := ints(f, 1)
	if err != nil {
		return 0, err
	}
	return int(v[0]), nil
}

// failures returns the agents' failed calls so far, and of those the ones
// past their deadline.
func (s *stormAgents) failures() (n, deadline int64, err error) {
	f, err := s.call("failures", "failures ", time.Minute)
	if err != nil {
		return 0, 0, err
	}
	v, err := ints(f, 2)
	if err != nil {
		return 0, 0, err
	}
	return v[0], v[1], nil
}

// watch arms the agents' watch for certificates from issuer.
func (s *stormAgents) watch(issuer string) error {
	_, err := s.call("watch "+issuer, "watching", time.Minute)
	return err
}

// wait waits for the watch's outcome and times it from trigger.
func (s *stormAgents) wait(trigger time.Time) (stormResult, error) {
	rest, err := s.Expect("rekeyed ", stormBound+2*time.Minute)
	if err != nil {
		return stormResult{}, fmt.Errorf("storm agents: %w", err)
	}
	var t stormTimes
	if err := json.Unmarshal([]byte(rest), &t); err != nil {
		return stormResult{}, fmt.Errorf("storm agents: %w", err)
	}
	return t.from(trigger)
}

// stormTimes is each agent's outcome of a watch, as Unix times in
// nanoseconds: when its CRL changed, when its state held only new
// certificates, when its SDS socket served them; Errors for the agents
// that did not get there.
type stormTimes struct {
	CRL    []int64  `json:"crl"`
	State  []int64  `json:"state"`
	Socket []int64  `json:"socket"`
	Errors []string `json:"errors,omitempty"`
}

// stormResult is the storm's timing, from the trigger.
type stormResult struct {
	crlLast, stateLast, socketLast, socketMedian time.Duration
	done                                         int // agents that finished
}

func (t stormTimes) from(trigger time.Time) (stormResult, error) {
	res := stormResult{done: len(t.Socket)}
	since := func(ns int64) time.Duration { return time.Unix(0, ns).Sub(trigger) }
	for i := range t.Socket {
		res.crlLast = max(res.crlLast, since(t.CRL[i]))
		res.stateLast = max(res.stateLast, since(t.State[i]))
	}
	if len(t.Errors) > 0 {
		return res, fmt.Errorf("%d agents: %s", len(t.Errors), t.Errors[0])
	}
	if len(t.Socket) == 0 {
		return res, errors.New("no agent")
	}
	sockets := make([]time.Duration, len(t.Socket))
	for i, ns := range t.Socket {
		sockets[i] = since(ns)
	}
	slices.Sort(sockets)
	res.socketLast, res.socketMedian = sockets[len(sockets)-1], sockets[len(sockets)/2]
	return res, nil
}

// fleet is the agents of a storm-agents worker, in its process.
type fleet struct {
	agents   []*agent.Agent
	sockets  []string
	sds      []secretv3.SecretDiscoveryServiceClient
	conns    []*grpc.ClientConn
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	failures atomic.Int64 // log records carrying an error
	deadline atomic.Int64 // of which the call's deadline passed
	run      []func()     // starts agent i
}

// startAgents makes one agent per node on an mTLS connection to xdsAddr
// with the node's certificate, each to serve SDS on its own socket under
// dir; f.run[i] starts agent i. They ask for their identities when they
// start and then only when woken (a CRL change): the poll is an hour.
func startAgents(ctx context.Context, dir, xdsAddr string, nodes []SeedNode, roots *x509.CertPool) (*fleet, error) {
	if err := raiseFileLimit(4*len(nodes) + 256); err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(TrustDomain)
	if err != nil {
		return nil, err
	}
	actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &fleet{cancel: cancel}
	log := slog.New(&errorCounter{n: &f.failures, deadline: &f.deadline})
	for i, n := range nodes {
		cert, err := tls.X509KeyPair([]byte(n.ChainPEM), []byte(n.KeyPEM))
		if err != nil {
			f.stop()
			return nil, fmt.Errorf("node %s: %w", n.Name, err)
		}
		conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(sidecarTLS(cert, roots))),
			grpc.WithStreamInterceptor(noIdentityWatch))
		if err != nil {
			f.stop()
			return nil, err
		}
		f.conns = append(f.conns, conn)
		socket := filepath.Join(dir, fmt.Sprintf("%d.sock", i))
		a, err := agent.New(agent.Config{Conn: conn, Node: n.Name, TrustDomain: td, SDSSocket: socket, IdentityPoll: time.Hour, Logger: log})
		if err != nil {
			f.stop()
			return nil, err
		}
		local, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			f.stop()
			return nil, err
		}
		f.conns = append(f.conns, local)
		f.agents, f.sockets = append(f.agents, a), append(f.sockets, socket)
		f.sds = append(f.sds, secretv3.NewSecretDiscoveryServiceClient(local))
		f.run = append(f.run, func() {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				if err := a.Run(actx); err != nil {
					fmt.Fprintf(os.Stderr, "agent %s stopped: %v\n", n.Name, err)
				}
			}()
		})
	}
	return f, nil
}

// coldStart runs the agents batch at a time, each batch once the previous
// one holds all its certificates (perAgent each), and returns how long
// that took.
func (f *fleet) coldStart(ctx context.Context, batch, perAgent int) (time.Duration, error) {
	begin := time.Now()
	for from := 0; from < len(f.agents); from += batch {
		to := min(from+batch, len(f.agents))
		for _, run := range f.run[from:to] {
			run()
		}
		if err := f.waitAll(ctx, f.agents[from:to], func(st agent.State) bool { return len(st.SVIDs) == perAgent }); err != nil {
			return 0, fmt.Errorf("agents %d-%d: first certificates: %w", from, to-1, err)
		}
	}
	return time.Since(begin), nil
}

func (f *fleet) stop() {
	f.cancel()
	f.wg.Wait()
	for _, c := range f.conns {
		c.Close()
	}
}

// snapshot returns every agent's state now.
func (f *fleet) snapshot() []agent.State {
	out := make([]agent.State, len(f.agents))
	for i, a := range f.agents {
		out[i], _ = a.State()
	}
	return out
}

// waitAll waits, up to ten minutes, until the state of each of agents
// satisfies ok, logging progress to stderr every ten seconds.
func (f *fleet) waitAll(ctx context.Context, agents []*agent.Agent, ok func(agent.State) bool) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	tick := time.NewTicker(10 * time.Second)
	defer tick.Stop()
	for i, a := range agents {
		for {
			st, changed := a.State()
			if ok(st) {
				break
			}
			select {
			case <-changed:
			case <-tick.C:
				fmt.Fprintf(os.Stderr, "waiting: %d of %d agents ready, %d failed calls so far\n", i, len(agents), f.failures.Load())
			case <-ctx.Done():
				return fmt.Errorf("agent %d of %d: %d certificates held, %d failed calls: %w", i, len(agents), len(st.SVIDs), f.failures.Load(), ctx.Err())
			}
		}
	}
	return nil
}

// rekeyedBy counts the certificates agents hold from issuer.
func (f *fleet) rekeyedBy(issuer string) int {
	n := 0
	for _, st := range f.snapshot() {
		for _, v := range st.SVIDs {
			if v.IssuerSerial == issuer {
				n++
			}
		}
	}
	return n
}

// rekeyWatch follows every agent until each serves only certificates from
// the new issuer.
type rekeyWatch struct {
	done chan agentRekeyed
	n    int
}

type agentRekeyed struct {
	crl, state, socket time.Time
	err                error
}

// watchRekey starts one watcher per agent: it records when the agent's
// CRL changed, when its state held only certificates from issuer for new
// keys, and when its SDS socket then served them.
func (f *fleet) watchRekey(ctx context.Context, issuer string, old []agent.State) *rekeyWatch {
	w := &rekeyWatch{done: make(chan agentRekeyed, len(f.agents)), n: len(f.agents)}
	ctx, cancel := context.WithTimeout(ctx, stormBound)
	var wg sync.WaitGroup
	for i, a := range f.agents {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.done <- f.follow(ctx, i, a, issuer, old[i])
		}()
	}
	go func() { wg.Wait(); cancel() }()
	return w
}

func (f *fleet) follow(ctx context.Context, i int, a *agent.Agent, issuer string, old agent.State) agentRekeyed {
	var r agentRekeyed
	for {
		st, changed := a.State()
		if r.crl.IsZero() && string(st.CRLPEM) != string(old.CRLPEM) {
			r.crl = time.Now()
		}
		if rekeyed(st, old, issuer) {
			r.state = time.Now()
			if r.crl.IsZero() {
				r.crl = r.state
			}
			if r.err = f.checkSocket(ctx, i, st); r.err == nil {
				r.socket = time.Now()
			}
			return r
		}
		select {
		case <-changed:
		case <-ctx.Done():
			r.err = fmt.Errorf("agent %d: not re-keyed: %w", i, ctx.Err())
			return r
		}
	}
}

// rekeyed reports whether st holds, for every identity of old, a
// certificate from issuer for another key than old's.
func rekeyed(st, old agent.State, issuer string) bool {
	for _, o := range old.SVIDs {
		v, ok := st.SVID(o.Identity)
		if !ok || v.IssuerSerial != issuer || v.Serial == o.Serial || v.Key == o.Key {
			return false
		}
	}
	return len(st.SVIDs) == len(old.SVIDs)
}

// checkSocket fetches every identity's secret from agent i's SDS socket,
// as Envoy does, until it serves the certificates of st (the socket
// publishes each state after the agent has it).
func (f *fleet) checkSocket(ctx context.Context, i int, st agent.State) error {
	names := make([]string, 0, len(st.SVIDs))
	for _, v := range st.SVIDs {
		names = append(names, v.ID.String())
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		resp, err := f.sds[i].FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resource.SecretType, ResourceNames: names})
		if err != nil {
			return fmt.Errorf("agent %d: fetch from its SDS socket: %w", i, err)
		}
		serials, err := servedSerials(resp)
		if err != nil {
			return fmt.Errorf("agent %d: %w", i, err)
		}
		stale := ""
		for _, v := range st.SVIDs {
			if serials[v.ID.String()] != v.Serial {
				stale = fmt.Sprintf("serial %q for %s where the agent holds %s", serials[v.ID.String()], v.Identity, v.Serial)
				break
			}
		}
		if stale == "" {
			return nil
		}
		if err := pause(ctx, 2*time.Millisecond); err != nil {
			return fmt.Errorf("agent %d: its SDS socket still serves %s: %w", i, stale, err)
		}
	}
}

// servedSerials returns the leaf serial (hex) of each certificate secret
// in resp, by secret name.
func servedSerials(resp *discoveryv3.DiscoveryResponse) (map[string]string, error) {
	out := map[string]string{}
	for _, r := range resp.GetResources() {
		s := new(tlsv3.Secret)
		if err := r.UnmarshalTo(s); err != nil {
			return nil, err
		}
		chain := s.GetTlsCertificate().GetCertificateChain().GetInlineBytes()
		if chain == nil {
			continue
		}
		leaf, err := firstCert(chain)
		if err != nil {
			return nil, fmt.Errorf("secret %s: %w", s.GetName(), err)
		}
		out[s.GetName()] = fmt.Sprintf("%x", leaf.SerialNumber)
	}
	return out, nil
}

// collect waits for every agent's outcome.
func (w *rekeyWatch) collect() stormTimes {
	var t stormTimes
	for range w.n {
		r := <-w.done
		if r.err != nil {
			t.Errors = append(t.Errors, r.err.Error())
			continue
		}
		t.CRL, t.State, t.Socket = append(t.CRL, r.crl.UnixNano()), append(t.State, r.state.UnixNano()), append(t.Socket, r.socket.UnixNano())
	}
	return t
}

// errorCounter is a slog handler that only counts the records that carry
// an error (a failed call to meshca, retried by the agent).
// Those that ran out of time (the agent's 30 s call deadline) are counted
// apart as well.
type errorCounter struct{ n, deadline *atomic.Int64 }

func (h *errorCounter) Enabled(context.Context, slog.Level) bool { return true }
func (h *errorCounter) Handle(_ context.Context, r slog.Record) error {
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "err" {
			h.n.Add(1)
			if strings.Contains(a.Value.String(), codes.DeadlineExceeded.String()) {
				h.deadline.Add(1)
			}
			return false
		}
		return true
	})
	return nil
}
func (h *errorCounter) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h *errorCounter) WithGroup(string) slog.Handler      { return h }

// noIdentityWatch answers the agents' identity watch Unimplemented, as a
// meshca without it would: they then learn of a CA switch only when asked
// (here, when the revocation wakes them), so that their storm is measured
// apart from the rotation's own re-key. With the watch, the switch reaches
// every agent at the rotation and the two overlap.
func noIdentityWatch(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if method == nodeapi.FullWatchIdentitiesMethod {
		return nil, status.Error(codes.Unimplemented, "bench: identity watch off")
	}
	return streamer(ctx, desc, cc, method, opts...)
}
