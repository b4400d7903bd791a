package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
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
// new certificate on its SDS socket. The agents run in a storm-agents
// worker, one agent.Agent per node with its own mTLS connection and SDS
// socket, so that their CPU and meshca's are measured apart.
func runAgentStorm(ctx context.Context, env *Env) (*Report, error) {
	sizes := []agentStormSize{{agents: 10, perAgent: 100}, {agents: 100, perAgent: 100}}
	if env.Quick {
		sizes = []agentStormSize{{agents: 4, perAgent: 5}}
	}
	rep := &Report{Intro: "N identities spread over agent nodes (100 each in the full run). The agents run in a process of their own " +
		"(the harness binary run again as its `storm-agents` worker: one `agent.Agent` per node, each with its own mTLS connection to " +
		"meshca and its own SDS Unix socket; one process, not one per node), apart from meshca and from the harness, so that the CPU " +
		"of each is measured alone; they still share the machine's cores with meshca. The agents start a tenth at a time and get " +
		"their first certificates. An intermediate CA rotation (`POST /v1/ca/rotate`) then switches issuance; meshca " +
		"re-keys the server-key certificates of the same identities at once (the same-run baseline: issue, lint, seal, commit with " +
		"audit, no node to push to). meshca's identity watch tells every agent of the switch at the rotation; the agents' process " +
		"answers the watch Unimplemented, as a meshca without it, so that the agents learn of the switch only when they ask and their " +
		"storm is measured apart from the rotation's own re-key; here every agent is made to ask at once, the worst burst, by revoking " +
		"an identity no node holds: the CRL change reaches every agent's trust stream and wakes its identity poll, as a revocation " +
		"does. Figure: from that revocation until the last agent's SDS socket serves, for every identity, a certificate from the new " +
		"CA for a key made after the switch (its own new key, CSR signed, recorded and audited by meshca; checked by a Fetch on each " +
		"socket by the agents' process, which reports the times to the harness); at most " + stormBound.String() +
		", after which the section reports how far the storm got. The server-key baseline is the rotation's own re-key of the same " +
		"identities (plus the trigger identity), timed from `POST /v1/ca/rotate` until `GET /v1/ca` counts every leaf re-issued; no " +
		"node holds those certificates, so nothing is pushed for them. CPU: meshca's from /proc/PID/stat over each phase; the " +
		"agents' (keys, CSRs, checks, SDS snapshots, and the Fetches that check their sockets) from the schedstat of their " +
		"process's threads over the storm, also per renewal. Failed calls are the agents' log records carrying an error (a call " +
		"to meshca that failed, mostly its 30 s deadline, retried with backoff)."}
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

	fleet, err := startStormAgents(ctx, env, m.XDS, seeded, size.perAgent)
	if err != nil {
		return err
	}
	defer fleet.Stop()
	batch := max(size.agents/10, 1)
	initial, err := fleet.coldStart(batch)
	if err != nil {
		return err
	}
	coldFailed, _, err := fleet.failures()
	if err != nil {
		return err
	}
	env.Logf("%d agents hold their %d certificates after %s (started %d at a time), %d failed calls", size.agents, n, fmtDur(initial), batch, coldFailed)

	// The server-key re-key of the same identities, by the rotation.
	admin := &adminClient{addr: m.Admin, http: &http.Client{Timeout: time.Minute}}
	before, err := admin.ca(ctx)
	if err != nil {
		return err
	}
	if err := fleet.mark(); err != nil {
		return err
	}
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
	if early, err := fleet.rekeyedBy(newIssuer); err != nil {
		return err
	} else if early > 0 {
		return fmt.Errorf("%d agent certificates moved to the new CA before the agents were woken: the storm would not be measured alone", early)
	}
	env.Logf("rotation: %d server-key leaves re-keyed by meshca after %s (server CPU %s)", after.Rotation.Leaves, fmtDur(serverKeys), fmtDur(cpu1-cpu0))

	// The agent storm.
	failed0, deadline0, err := fleet.failures()
	if err != nil {
		return err
	}
	counts0, err := signCounts(ctx, admin)
	if err != nil {
		return err
	}
	agentsCPU0, err := threadsCPU(fleet.Pid())
	if err != nil {
		return err
	}
	if err := fleet.watch(newIssuer); err != nil {
		return err
	}
	trigger := time.Now()
	if err := admin.post(ctx, api.PathRevoke+"/"+stormTrigger, api.RevokeRequest{Reason: "bench"}, nil); err != nil {
		return err
	}
	res, err := fleet.wait(trigger)
	agentsCPU1, cpuErr := threadsCPU(fleet.Pid())
	failed1, deadline1, failErr := fleet.failures()
	rekeyedNow, countErr := fleet.rekeyedBy(newIssuer)
	if err != nil {
		// Stopped first: an overloaded meshca may not answer its admin
		// API while the agents' calls keep coming.
		fleet.Stop()
	} else if err := errors.Join(cpuErr, failErr, countErr); err != nil {
		return err
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
			Value: fmt.Sprintf("not within %s: %d of %d agents done, %d of %d certificates from the new CA", stormBound, res.done, size.agents, rekeyedNow, n),
			Goal:  "≤ 3 s", Verdict: NotMet},
			Row{Figure: fmt.Sprintf("server-key re-key of the same %d identities by the rotation", n), Value: fmtDur(serverKeys)},
			counts,
			Row{Figure: fmt.Sprintf("agent calls to meshca that failed and were retried (of which past their deadline), %d identities", n),
				Value: fmt.Sprintf("%d (%d)", failed1-failed0, deadline1-deadline0)})
		rep.Notes = append(rep.Notes, fmt.Sprintf("The storm of %d identities did not finish within its bound: %v", n, err))
		return nil
	}
	cpu2, err := cpuOf(m.Pid())
	if err != nil {
		return err
	}
	agentsCPU := agentsCPU1 - agentsCPU0
	failed := failed1 - failed0
	if err := waitAgentCertsMoved(ctx, admin); err != nil {
		return err
	}
	env.Logf("agent storm: CRL at every agent after %s; %d certificates re-keyed, last state %s, last socket %s (median agent %s); server CPU %s, agents' process %s; %d failed calls retried",
		fmtDur(res.crlLast), n, fmtDur(res.stateLast), fmtDur(res.socketLast), fmtDur(res.socketMedian), fmtDur(cpu2-cpu1), fmtDur(agentsCPU), failed)

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
		Row{Figure: fmt.Sprintf("CPU of the storm: server + the %d agents (their own process)", size.agents), Value: fmt.Sprintf("%s + %s", fmtDur(cpu2-cpu1), fmtDur(agentsCPU))},
		Row{Figure: fmt.Sprintf("agents' CPU per renewal (key, CSR, check, SDS), %d identities", n), Value: fmtDur(agentsCPU / time.Duration(n))},
		Row{Figure: fmt.Sprintf("agent calls to meshca that failed and were retried (of which past their deadline), %d identities", n),
			Value: fmt.Sprintf("%d (%d)", failed, deadline1-deadline0)},
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
