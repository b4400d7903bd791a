package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
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
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/nodeapi"
)

// stormBound is how long the agent storm may take before the section
// reports how far it got.
const stormBound = 5 * time.Minute

// stormTrigger is the identity the agent storm revokes to make every agent
// ask for its identities at once; no node holds it.
const stormTrigger = "storm-trigger"

// agentStormSize is how many agent nodes hold how many identities each.
type agentStormSize struct{ agents, perAgent int }

// runAgentStorm re-keys every identity of many agent nodes after an
// intermediate CA rotation: each agent makes a new key per identity, has
// meshca sign its CSR (which meshca records and audits), and serves the
// new certificate on its SDS socket. The agents run in this process, one
// agent.Agent per node with its own mTLS connection and SDS socket.
func runAgentStorm(ctx context.Context, env *Env) (*Report, error) {
	sizes := []agentStormSize{{agents: 10, perAgent: 100}, {agents: 100, perAgent: 100}}
	if env.Quick {
		sizes = []agentStormSize{{agents: 4, perAgent: 5}}
	}
	rep := &Report{Intro: "N identities spread over agent nodes (100 each in the full run), each node's agent running in the harness " +
		"process (one `agent.Agent` per node, each with its own mTLS connection to meshca and its own SDS Unix socket; one process, " +
		"not one per node: the figures below are meshca's). The agents start a tenth at a time and get their first certificates. " +
		"An intermediate CA rotation (`POST /v1/ca/rotate`) then switches issuance; meshca " +
		"re-keys the server-key certificates of the same identities at once (the same-run baseline: issue, lint, seal, commit with " +
		"audit, no node to push to). meshca's identity watch tells every agent of the switch at the rotation; the harness answers " +
		"the watch Unimplemented, as a meshca without it, so that the agents learn of the switch only when they ask and their storm " +
		"is measured apart from the rotation's own re-key; here every agent is made to ask at once, the worst burst, by revoking an identity no node holds: the CRL change " +
		"reaches every agent's trust stream and wakes its identity poll, as a revocation does. Figure: from that revocation until " +
		"the last agent's SDS socket serves, for every identity, a certificate from the new CA for a key made after the switch " +
		"(its own new key, CSR signed, recorded and audited by meshca; checked by a Fetch on each socket); at most " + stormBound.String() +
		", after which the section reports how far the storm got. The server-key baseline is the rotation's own re-key of the same " +
		"identities (plus the trigger identity), timed from `POST /v1/ca/rotate` until `GET /v1/ca` counts every leaf re-issued; no " +
		"node holds those certificates, so nothing is pushed for them. The agents' own work (keys, CSRs, checks, SDS snapshots) is " +
		"the second CPU figure. Failed calls are the agents' log records carrying an error (a call to meshca that failed, mostly " +
		"its 30 s deadline, retried with backoff)."}
	for _, size := range sizes {
		if err := agentStormCase(ctx, env, rep, size); err != nil {
			return nil, fmt.Errorf("%d agents × %d identities: %w", size.agents, size.perAgent, err)
		}
	}
	return rep, nil
}

// agentStormCase runs the storm at one size and adds its rows to rep.
func agentStormCase(ctx context.Context, env *Env, rep *Report, size agentStormSize) error {
	n := size.agents * size.perAgent
	env = &Env{Config: env.Config, Dir: filepath.Join(env.Dir, fmt.Sprintf("n%d", n))}
	data := filepath.Join(env.Dir, "data")
	seeded, err := seedAgentNodes(ctx, data, size)
	if err != nil {
		return err
	}
	m, _, err := StartMeshca(ctx, env, data)
	if err != nil {
		return err
	}
	defer m.Stop()

	fleet, err := startAgents(ctx, env, m.XDS, seeded)
	if err != nil {
		return err
	}
	defer fleet.stop()
	batch := max(size.agents/10, 1)
	initial, err := fleet.coldStart(ctx, env, batch, size.perAgent)
	if err != nil {
		return err
	}
	env.Logf("%d agents hold their %d certificates after %s (started %d at a time), %d failed calls", size.agents, n, fmtDur(initial), batch, fleet.failures.Load())

	// The server-key re-key of the same identities, by the rotation.
	admin := &adminClient{addr: m.Admin, http: &http.Client{Timeout: time.Minute}}
	before, err := admin.ca(ctx)
	if err != nil {
		return err
	}
	oldState := fleet.snapshot()
	cpu0, err := cpuOf(m.Pid())
	if err != nil {
		return err
	}
	rotated := time.Now()
	if err := admin.post(ctx, api.PathCARotate, api.RotateCARequest{}, nil); err != nil {
		return err
	}
	var after api.CA
	for {
		if after, err = admin.ca(ctx); err != nil {
			return err
		}
		r := after.Rotation
		if r != nil && r.Leaves > 0 && r.Reissued+r.ReissueFailed >= r.Leaves {
			break
		}
		if after.Rotation == nil && after.Issuer.Serial != before.Issuer.Serial {
			return errors.New("the rotation ended before the agents re-keyed: it should wait for them")
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return err
		}
		if time.Since(rotated) > 10*time.Minute {
			return fmt.Errorf("server-key re-key not done after 10m: %+v", after.Rotation)
		}
	}
	serverKeys := time.Since(rotated)
	cpu1, err := cpuOf(m.Pid())
	if err != nil {
		return err
	}
	newIssuer := after.Issuer.Serial
	if newIssuer == before.Issuer.Serial {
		return errors.New("the rotation did not switch issuance")
	}
	if after.Rotation.ReissueFailed > 0 {
		return fmt.Errorf("meshca failed to re-key %d server-key certificates", after.Rotation.ReissueFailed)
	}
	if early := fleet.rekeyedBy(newIssuer); early > 0 {
		return fmt.Errorf("%d agent certificates moved to the new CA before the agents were woken: the storm would not be measured alone", early)
	}
	env.Logf("rotation: %d server-key leaves re-keyed by meshca after %s (server CPU %s)", after.Rotation.Leaves, fmtDur(serverKeys), fmtDur(cpu1-cpu0))

	// The agent storm.
	failed0, deadline0 := fleet.failures.Load(), fleet.deadline.Load()
	counts0, err := signCounts(ctx, admin)
	if err != nil {
		return err
	}
	clientCPU0 := processCPU()
	watch := fleet.watchRekey(ctx, newIssuer, oldState)
	trigger := time.Now()
	if err := admin.post(ctx, api.PathRevoke+"/"+stormTrigger, api.RevokeRequest{Reason: "bench"}, nil); err != nil {
		return err
	}
	res, err := watch.wait(trigger)
	if err != nil {
		// Stopped first: an overloaded meshca may not answer its admin
		// API while the agents' calls keep coming.
		fleet.stop()
	}
	counts := Row{Figure: fmt.Sprintf("CSRs meshca signed for the storm / refused as over a node's CSR limit / refused as beyond the signing queue / abandoned by their callers (%d needed)", n)}
	if counts1, merr := signCounts(ctx, admin); merr == nil {
		counts.Value = fmt.Sprintf("%d / %d / %d / %d", counts1.signed-counts0.signed, counts1.limited-counts0.limited,
			counts1.busy-counts0.busy, counts1.abandoned-counts0.abandoned)
	} else if err == nil {
		return merr
	} else {
		counts.Value = "unread: meshca's /metrics did not answer (" + merr.Error() + ")"
	}
	if err != nil {
		if env.Quick {
			return err
		}
		// A storm that does not finish is a figure too: how far it got.
		env.Logf("agent storm not finished: %v", err)
		rep.Rows = append(rep.Rows, Row{Figure: fmt.Sprintf("%d identities on %d agents re-keyed, revocation → last SDS socket serving the new CA's certificates", n, size.agents),
			Value: fmt.Sprintf("not within %s: %d of %d agents done, %d of %d certificates from the new CA", stormBound, res.done, size.agents, fleet.rekeyedBy(newIssuer), n),
			Goal:  "≤ 3 s", Verdict: NotMet},
			Row{Figure: fmt.Sprintf("server-key re-key of the same %d identities by the rotation", n), Value: fmtDur(serverKeys)},
			counts,
			Row{Figure: fmt.Sprintf("agent calls to meshca that failed and were retried (of which past their deadline), %d identities", n),
				Value: fmt.Sprintf("%d (%d)", fleet.failures.Load()-failed0, fleet.deadline.Load()-deadline0)})
		rep.Notes = append(rep.Notes, fmt.Sprintf("The storm of %d identities did not finish within its bound: %v", n, err))
		return nil
	}
	cpu2, err := cpuOf(m.Pid())
	if err != nil {
		return err
	}
	clientCPU := processCPU() - clientCPU0
	failed := fleet.failures.Load() - failed0
	if err := waitAgentCertsMoved(ctx, admin); err != nil {
		return err
	}
	env.Logf("agent storm: CRL at every agent after %s; %d certificates re-keyed, last state %s, last socket %s (median agent %s); server CPU %s, agents' process %s; %d failed calls retried",
		fmtDur(res.crlLast), n, fmtDur(res.stateLast), fmtDur(res.socketLast), fmtDur(res.socketMedian), fmtDur(cpu2-cpu1), fmtDur(clientCPU), failed)

	row := Row{Figure: fmt.Sprintf("%d identities on %d agents re-keyed, revocation → last SDS socket serving the new CA's certificates", n, size.agents),
		Value:    fmt.Sprintf("%s (%s)", fmtDur(res.socketLast), fmtDur(res.socketMedian)),
		Baseline: fmtDur(serverKeys) + " (server-key re-key)", Ratio: float64(res.socketLast) / float64(serverKeys)}
	if n >= 10000 {
		row.Goal, row.Verdict = "≤ 3 s", Judge(res.socketLast <= 3*time.Second)
	}
	rep.Rows = append(rep.Rows, row,
		Row{Figure: fmt.Sprintf("of which: the CRL change at every agent (the wake-up), %d identities", n), Value: fmtDur(res.crlLast)},
		Row{Figure: fmt.Sprintf("rate, %d agent CSRs (key on the node, CSR signed, recorded, delivered)", n),
			Value:    fmt.Sprintf("%.0f certs/s", float64(n)/res.socketLast.Seconds()),
			Baseline: fmt.Sprintf("%.0f certs/s", float64(after.Rotation.Leaves)/serverKeys.Seconds()),
			Ratio:    (float64(n) / res.socketLast.Seconds()) / (float64(after.Rotation.Leaves) / serverKeys.Seconds())},
		Row{Figure: fmt.Sprintf("server CPU per certificate: agent CSR vs server key, %d identities", n), Value: fmtDur((cpu2 - cpu1) / time.Duration(n)),
			Baseline: fmtDur((cpu1 - cpu0) / time.Duration(after.Rotation.Leaves)), Ratio: ratioOf(int64((cpu2-cpu1)/time.Duration(n)), int64((cpu1-cpu0)/time.Duration(after.Rotation.Leaves)))},
		Row{Figure: fmt.Sprintf("CPU of the storm: server + the %d agents", size.agents), Value: fmt.Sprintf("%s + %s", fmtDur(cpu2-cpu1), fmtDur(clientCPU))},
		Row{Figure: fmt.Sprintf("agent calls to meshca that failed and were retried (of which past their deadline), %d identities", n),
			Value: fmt.Sprintf("%d (%d)", failed, fleet.deadline.Load()-deadline0)},
		counts,
		Row{Figure: fmt.Sprintf("first certificates: %d agents started %d at a time → all %d held", size.agents, batch, n), Value: fmtDur(initial)},
	)
	return nil
}

// waitAgentCertsMoved waits, up to a minute, until meshca's rotation
// counts no agent certificate from the previous CA (it counts them on its
// own schedule).
func waitAgentCertsMoved(ctx context.Context, admin *adminClient) error {
	deadline := time.Now().Add(time.Minute)
	for {
		c, err := admin.ca(ctx)
		if err != nil {
			return err
		}
		if c.Rotation == nil || c.Rotation.OldAgentCerts == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("meshca still counts %d agent certificates from the previous CA", c.Rotation.OldAgentCerts)
		}
		if err := pause(ctx, 50*time.Millisecond); err != nil {
			return err
		}
	}
}

// seedAgentNodes seeds size.agents agent nodes holding size.perAgent
// identities each (agent-i holds id-i-0 ...), joined, plus the storm
// trigger identity that no node holds.
func seedAgentNodes(ctx context.Context, dataDir string, size agentStormSize) (*Seeded, error) {
	reg, auth, closeStore, err := openRegistry(ctx, dataDir, false, EtcdTarget{})
	if err != nil {
		return nil, err
	}
	defer closeStore()
	n := size.agents * size.perAgent
	err = parallel(ctx, n+1, 64, func(i int) error {
		name := stormTrigger
		if i < n {
			name = fmt.Sprintf("id-%d-%d", i/size.perAgent, i%size.perAgent)
		}
		_, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: name}, "bench")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("seed identities: %w", err)
	}
	nodes := make([]SeedNode, size.agents)
	err = parallel(ctx, size.agents, 16, func(i int) error {
		ids := make([]string, size.perAgent)
		for j := range ids {
			ids[j] = fmt.Sprintf("id-%d-%d", i, j)
		}
		n, err := joinAgentNode(ctx, reg, fmt.Sprintf("agent-%d", i), ids)
		nodes[i] = n
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("seed agent nodes: %w", err)
	}
	return &Seeded{Nodes: nodes, BundlePEM: auth.BundlePEM()}, nil
}

// joinAgentNode adds an agent node for ids and joins it, as `meshca node
// add --agent` and the agent's first start do.
func joinAgentNode(ctx context.Context, reg *registry.Registry, name string, ids []string) (SeedNode, error) {
	_, tok, err := reg.AddNode(ctx, registry.AddNode{Name: name, Identities: ids, Agent: true}, "bench")
	if err != nil {
		return SeedNode{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return SeedNode{}, err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return SeedNode{}, err
	}
	joined, err := reg.Join(ctx, name, tok.Token, csr, "bench")
	if err != nil {
		return SeedNode{}, err
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return SeedNode{}, err
	}
	return SeedNode{Name: name, ChainPEM: string(joined.ChainPEM), KeyPEM: string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))}, nil
}

// fleet is many agents running in this process.
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

// startAgents starts one agent per node on an mTLS connection to xdsAddr
// with the node's certificate, each serving SDS on its own socket under
// env.Dir. They ask for their identities when they start and then only
// when woken (a CRL change): the poll is an hour.
func startAgents(ctx context.Context, env *Env, xdsAddr string, seeded *Seeded) (*fleet, error) {
	nodes := seeded.Nodes
	if err := raiseFileLimit(4*len(nodes) + 256); err != nil {
		return nil, err
	}
	td, err := spiffeid.TrustDomainFromString(TrustDomain)
	if err != nil {
		return nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(seeded.BundlePEM) {
		return nil, errors.New("bench: no root in the seeded bundle")
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
		socket := filepath.Join(env.Dir, "s", fmt.Sprintf("%d.sock", i))
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
					env.Logf("agent %s stopped: %v", n.Name, err)
				}
			}()
		})
	}
	return f, nil
}

// coldStart runs the agents batch at a time, each batch once the previous
// one holds all its certificates (perAgent each), and returns how long
// that took.
func (f *fleet) coldStart(ctx context.Context, env *Env, batch, perAgent int) (time.Duration, error) {
	begin := time.Now()
	for from := 0; from < len(f.agents); from += batch {
		to := min(from+batch, len(f.agents))
		for _, run := range f.run[from:to] {
			run()
		}
		if err := f.waitAll(ctx, env, f.agents[from:to], func(st agent.State) bool { return len(st.SVIDs) == perAgent }); err != nil {
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
// satisfies ok, logging progress every ten seconds.
func (f *fleet) waitAll(ctx context.Context, env *Env, agents []*agent.Agent, ok func(agent.State) bool) error {
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
				env.Logf("waiting: %d of %d agents ready, %d failed calls so far", i, len(agents), f.failures.Load())
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

// stormResult is the storm's timing, from the trigger.
type stormResult struct {
	crlLast, stateLast, socketLast, socketMedian time.Duration
	done                                         int // agents that finished
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

// wait collects every agent's outcome and times it from trigger.
func (w *rekeyWatch) wait(trigger time.Time) (stormResult, error) {
	var (
		res     stormResult
		sockets []time.Duration
		errs    []error
	)
	for range w.n {
		r := <-w.done
		if r.err != nil {
			errs = append(errs, r.err)
			continue
		}
		res.done++
		res.crlLast = max(res.crlLast, r.crl.Sub(trigger))
		res.stateLast = max(res.stateLast, r.state.Sub(trigger))
		sockets = append(sockets, r.socket.Sub(trigger))
	}
	if len(errs) > 0 {
		return res, fmt.Errorf("%d agents: %w", len(errs), errs[0])
	}
	slices.Sort(sockets)
	res.socketLast, res.socketMedian = sockets[len(sockets)-1], sockets[len(sockets)/2]
	return res, nil
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

// adminClient calls meshca's admin API.
type adminClient struct {
	addr string
	http *http.Client
}

func (c *adminClient) ca(ctx context.Context) (api.CA, error) {
	var out api.CA
	err := callJSON(ctx, c.http, http.MethodGet, "http://"+c.addr+api.PathCA, nil, http.StatusOK, &out)
	return out, err
}

// post sends body to path and decodes the 200 or 201 answer into out
// (nil: discarded).
func (c *adminClient) post(ctx context.Context, path string, body, out any) error {
	if out == nil {
		out = new(json.RawMessage)
	}
	err := callJSON(ctx, c.http, http.MethodPost, "http://"+c.addr+path, body, http.StatusOK, out)
	return err
}

// signCounts reads from meshca's metrics how many agent CSRs it signed and
// how many it refused as over a node's CSR limit.
func signCounts(ctx context.Context, admin *adminClient) (c csrCounts, err error) {
	text, err := admin.get(ctx, "/metrics")
	if err != nil {
		return csrCounts{}, err
	}
	for _, line := range strings.Split(string(text), "\n") {
		name, value, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		v, _ := strconv.ParseFloat(strings.TrimSpace(value), 64)
		switch name {
		case `meshca_audit_events_total{action="cert.sign",outcome="ok"}`:
			c.signed = int64(v)
		case `meshca_refusals_total{action="cert.sign",outcome="denied",reason="rate_limited"}`:
			c.limited = int64(v)
		case `meshca_xds_events_total{event="csrs_refused"}`:
			c.busy = int64(v)
		case `meshca_xds_events_total{event="csrs_abandoned"}`:
			c.abandoned = int64(v)
		}
	}
	return c, nil
}

// csrCounts are meshca's counts of agent CSRs: signed, refused as over a
// node's CSR limit, refused as beyond the signing queue (busy), and
// abandoned by their callers before they were signed or stored.
type csrCounts struct{ signed, limited, busy, abandoned int64 }

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

// pause waits d or until ctx ends.
func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// get returns the body of a 200 answer to GET path.
func (c *adminClient) get(ctx context.Context, path string) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+c.addr+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s answered %s: %.200s", path, resp.Status, data)
	}
	return data, nil
}
