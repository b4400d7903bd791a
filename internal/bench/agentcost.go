package bench

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
)

// runAgentCost runs one `meshca agent` process (the real binary) serving
// 100 identities and measures what it costs the node: its memory, its CPU
// per renewal, and how long a revocation at meshca takes to reach its SDS
// socket.
func runAgentCost(ctx context.Context, env *Env) (*Report, error) {
	ids, revocations := 100, 50
	if env.Quick {
		ids, revocations = 5, 3
	}
	slim := env.Agent != ""
	agentName := "`meshca agent`"
	if slim {
		agentName = "`meshca-agent` (the agent alone, `make build`'s bin/meshca-agent)"
	}
	rep := &Report{Intro: fmt.Sprintf("One %s process (the real binary, default flags: identity poll 30 s) for an agent node "+
		"holding %d identities, joined with its one-time token, serving SDS on a Unix socket to one state-of-the-world SDS stream "+
		"(this harness, as Envoy, asking for the %d certificates and the trust bundle). Memory: VmRSS and VmHWM from /proc/PID/status "+
		"once every certificate is served, and again at the end. Revocation: `POST /v1/revoke/NAME` of an identity the node does not "+
		"hold, %d times in turn, each timed from the request until the bundle secret on the agent's socket carries a CRL listing the "+
		"revoked serial (p99 by nearest rank: of %d samples, the highest). Renewal, before those: an intermediate CA rotation "+
		"(`POST /v1/ca/rotate`); meshca tells the agent of the switch on its identity watch and the agent re-keys all %d identities "+
		"at once, while meshca re-keys its own server-key certificates of the same identities; the round is timed from the request "+
		"until the socket serves every new "+
		"certificate. CPU per renewal is the CPU time of the agent's threads (/proc/PID/task/*/schedstat, to the nanosecond) over that round, divided by %d, beside meshca's per identity until its own re-key is done too (the agent's CSR and meshca's server-key certificate).", agentName, ids, ids, revocations, revocations, ids, ids)}
	rep.Intro += fmt.Sprintf(" Once every certificate is served, %d more streams, one per secret as Envoy opens them when each secret names its SDS source, "+
		"each on a connection of its own (Envoy shares one), and the memory read again.", ids+1)
	if slim {
		rep.Intro += fmt.Sprintf(" Beside it, at the end, the same agent run as `meshca agent` (the whole meshca binary) for a node with no identity and for "+
			"another node holding %d identities, each measured alone once it serves everything, as above.", ids)
	}

	data := filepath.Join(env.Dir, "data")
	tokens, err := seedAgentCost(ctx, data, ids, revocations+1, slim)
	if err != nil {
		return nil, err
	}
	m, _, err := StartMeshca(ctx, env, data)
	if err != nil {
		return nil, err
	}
	defer m.Stop()
	admin := &adminClient{addr: m.Admin, http: &http.Client{Timeout: time.Minute}}
	pin, err := admin.get(ctx, api.PathCAPin)
	if err != nil {
		return nil, err
	}
	bundleName := "spiffe://" + TrustDomain

	// Baseline: the same binary as the agent of a node with no identity,
	// serving only the trust bundle.
	emptyMem, err := agentMemServing(ctx, env, slim, m.XDS, "agent-empty", tokens[1], pin, []string{bundleName})
	if err != nil {
		return nil, fmt.Errorf("agent of a node with no identity: %w", err)
	}

	begin := time.Now()
	p, socket, err := startAgentProc(ctx, env, slim, m.XDS, "agent-0", tokens[0], pin)
	if err != nil {
		return nil, err
	}
	defer p.Stop()

	names := heldNames(0, ids)
	sds, err := followSDS(ctx, socket, append(slices.Clone(names), bundleName))
	if err != nil {
		return nil, err
	}
	defer sds.stop()
	first, err := sds.until(ctx, "every certificate", func(s servedSecrets) bool { return s.leaves(names) != nil })
	if err != nil {
		return nil, fmt.Errorf("%w; agent: %s", err, p.stderrTail())
	}
	ready := time.Since(begin)
	mem, err := memOf(p.Pid())
	if err != nil {
		return nil, err
	}
	env.Logf("agent serves %d certificates %s after it started: %s; the agent of a node with no identity: %s", ids, fmtDur(ready), mem, emptyMem)
	idle, idleAfter, err := memIdle(ctx, p.Pid(), mem)
	if err != nil {
		return nil, err
	}
	env.Logf("the same agent once idle, %s later: %s", fmtDur(idleAfter), idle)
	// Envoy opens one SDS stream per secret when each names its SDS
	// source: the same secrets again, that way, each stream on a
	// connection of its own (Envoy shares one: this is the upper bound).
	perSecret, err := memPerSecretStreams(ctx, p.Pid(), socket, append(slices.Clone(names), bundleName))
	if err != nil {
		return nil, err
	}
	env.Logf("with %d more SDS streams, one per secret as Envoy opens them, each on its own connection: %s", len(names)+1, perSecret)

	// One renewal round: an intermediate CA rotation. meshca tells the
	// agent of the switch on its identity watch, and the agent re-keys
	// every identity at once, while meshca re-keys its own server-key
	// certificates of the same identities. The round comes before the
	// revocations.
	before, err := admin.ca(ctx)
	if err != nil {
		return nil, err
	}
	agentCPU0, err := threadsCPU(p.Pid())
	if err != nil {
		return nil, err
	}
	serverCPU0, err := threadsCPU(m.Pid())
	if err != nil {
		return nil, err
	}
	ticks0, err := cpuOf(p.Pid())
	if err != nil {
		return nil, err
	}
	firstLeaves := first.leaves(names)
	t0 := time.Now()
	if err := admin.post(ctx, api.PathCARotate, api.RotateCARequest{}, nil); err != nil {
		return nil, err
	}
	served, err := sds.until(ctx, "every certificate re-keyed under the new CA", func(s servedSecrets) bool {
		leaves := s.leaves(names)
		if leaves == nil {
			return false
		}
		for i, l := range leaves {
			if l[0].SerialNumber.Cmp(firstLeaves[i][0].SerialNumber) == 0 {
				return false
			}
		}
		return fromIssuer(leaves, before.Issuer.Serial) == 0
	})
	if err != nil {
		return nil, err
	}
	round := time.Since(t0)
	agentCPU1, err := threadsCPU(p.Pid())
	if err != nil {
		return nil, err
	}
	ticks1, err := cpuOf(p.Pid())
	if err != nil {
		return nil, err
	}
	after, err := waitServerRekey(ctx, admin, before)
	if err != nil {
		return nil, err
	}
	if moved := fromIssuer(served.leaves(names), after.Issuer.Serial); moved != len(names) {
		return nil, fmt.Errorf("the agent serves %d of %d certificates from the new CA %s", moved, len(names), after.Issuer.Serial)
	}
	serverCPU1, err := threadsCPU(m.Pid())
	if err != nil {
		return nil, err
	}
	mem2, err := memOf(p.Pid())
	if err != nil {
		return nil, err
	}
	perRenewal := (agentCPU1 - agentCPU0) / time.Duration(ids)
	serverPer := (serverCPU1 - serverCPU0) / time.Duration(ids)
	env.Logf("renewal round: %d re-keyed in %s; agent CPU %s (%s each; /proc/PID/stat says %s), meshca CPU %s (%s each); %s",
		ids, fmtDur(round), fmtDur(agentCPU1-agentCPU0), fmtDur(perRenewal), fmtDur(ticks1-ticks0), fmtDur(serverCPU1-serverCPU0), fmtDur(serverPer), mem2)

	// Revocation at meshca → CRL on the agent's socket.
	var lat, returned []time.Duration
	for k := range revocations {
		t0 := time.Now()
		var rev api.Revoked
		if err := admin.post(ctx, api.PathRevoke+"/"+spareName(k+1), api.RevokeRequest{Reason: "bench"}, &rev); err != nil {
			return nil, err
		}
		returned = append(returned, time.Since(t0))
		if len(rev.Serials) == 0 {
			return nil, fmt.Errorf("revoking %s put no serial on the CRL", spareName(k+1))
		}
		if _, err := sds.until(ctx, "the CRL listing "+spareName(k+1), func(s servedSecrets) bool { return s.crlLists(bundleName, rev.Serials) }); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	slices.Sort(returned)
	p50, p99 := percentile(lat, 50), percentile(lat, 99)
	env.Logf("revocation → CRL on the agent's socket: p50 %s, p99 %s, max %s over %d; the request returned after p50 %s",
		fmtDur(p50), fmtDur(p99), fmtDur(lat[len(lat)-1]), len(lat), fmtDur(percentile(returned, 50)))

	// The same agent as `meshca agent`, the whole meshca binary, beside.
	var fullMem, fullEmptyMem procMem
	if slim {
		if fullEmptyMem, err = agentMemServing(ctx, env, false, m.XDS, "full-empty", tokens[3], pin, []string{bundleName}); err != nil {
			return nil, fmt.Errorf("meshca agent of a node with no identity: %w", err)
		}
		if fullMem, err = agentMemServing(ctx, env, false, m.XDS, "full-1", tokens[2], pin, heldNames(1, ids)); err != nil {
			return nil, fmt.Errorf("meshca agent of a node with %d identities: %w", ids, err)
		}
		env.Logf("meshca agent (the whole binary) serving %d certificates: %s; with no identity: %s", ids, fullMem, fullEmptyMem)
	}

	rssRow := Row{Figure: fmt.Sprintf("agent VmRSS, %d identities served", ids), Value: fmtBytes(mem.rss),
		Baseline: fmtBytes(emptyMem.rss) + " (no identity)", Ratio: ratioOf(mem.rss, emptyMem.rss)}
	revRow := Row{Figure: fmt.Sprintf("revocation → CRL on the agent's SDS socket, p99 of %d", len(lat)), Value: fmtDur(p99)}
	if !env.Quick {
		rssRow.Goal, rssRow.Verdict = "≤ 20 MiB", Judge(max(mem.rss, mem2.rss) <= 20<<20)
		revRow.Goal, revRow.Verdict = "≤ 2 s", Judge(p99 <= 2*time.Second)
	}
	rep.Rows = append(rep.Rows,
		rssRow,
		Row{Figure: "of which anonymous (heap, stacks) / file-backed (the binary's pages)", Value: fmtBytes(mem.anon) + " / " + fmtBytes(mem.file),
			Baseline: fmtBytes(emptyMem.anon) + " / " + fmtBytes(emptyMem.file) + " (no identity)"},
		Row{Figure: fmt.Sprintf("agent VmRSS, %d identities served, once idle (it returns freed memory a second after the last change; read within %s)", ids, fmtDur(idleWithin)),
			Value: fmtBytes(idle.rss) + " (anonymous " + fmtBytes(idle.anon) + ")", Baseline: fmtBytes(mem.rss) + " (at once)", Ratio: ratioOf(idle.rss, mem.rss)},
		Row{Figure: "agent VmRSS and VmHWM after a renewal round of every identity", Value: fmtBytes(mem2.rss) + ", peak " + fmtBytes(mem2.hwm)},
		Row{Figure: "agent CPU per renewal (key, CSR, check, serve)", Value: fmtDur(perRenewal),
			Baseline: fmtDur(serverPer) + " (meshca per identity: the CSR and its own re-key)", Ratio: ratioOf(int64(perRenewal), int64(serverPer))},
		Row{Figure: fmt.Sprintf("agent VmRSS with %d more SDS streams, one per secret as Envoy opens them (each on its own connection)", ids+1), Value: fmtBytes(perSecret.rss),
			Baseline: fmtBytes(mem.rss) + " (one stream)", Ratio: ratioOf(perSecret.rss, mem.rss)},
		Row{Figure: fmt.Sprintf("agent VmRSS per identity served, above the agent with none (%d identities)", ids),
			Value: fmtBytes((mem.rss - emptyMem.rss) / int64(ids))},
		Row{Figure: fmt.Sprintf("renewal round of %d identities, CA rotation → all served", ids), Value: fmtDur(round)},
		revRow,
		Row{Figure: "revocation → CRL on the agent's SDS socket, p50", Value: fmtDur(p50),
			Baseline: fmtDur(percentile(returned, 50)) + " (request returned)", Ratio: ratioOf(int64(p50), int64(percentile(returned, 50)))},
		Row{Figure: fmt.Sprintf("agent started → %d certificates served (join, keys, CSRs)", ids), Value: fmtDur(ready)},
	)
	if slim {
		agentSize, err1 := fileSize(env.Agent)
		meshcaSize, err2 := fileSize(env.Meshca)
		if err := errors.Join(err1, err2); err != nil {
			return nil, err
		}
		rep.Rows = append(rep.Rows,
			Row{Figure: fmt.Sprintf("`meshca agent` (the whole meshca binary) VmRSS, %d identities served", ids), Value: fmtBytes(fullMem.rss),
				Baseline: fmtBytes(fullEmptyMem.rss) + " (no identity)", Ratio: ratioOf(fullMem.rss, fullEmptyMem.rss)},
			Row{Figure: "of which anonymous / file-backed", Value: fmtBytes(fullMem.anon) + " / " + fmtBytes(fullMem.file),
				Baseline: fmtBytes(fullEmptyMem.anon) + " / " + fmtBytes(fullEmptyMem.file) + " (no identity)"},
			Row{Figure: fmt.Sprintf("`meshca-agent` VmRSS vs `meshca agent`, %d identities served", ids), Value: fmtBytes(mem.rss),
				Baseline: fmtBytes(fullMem.rss), Ratio: ratioOf(mem.rss, fullMem.rss)},
			Row{Figure: "binary size, `meshca-agent` vs `meshca`", Value: fmtBytes(agentSize), Baseline: fmtBytes(meshcaSize), Ratio: ratioOf(agentSize, meshcaSize)},
		)
	}
	return rep, nil
}

// memPerSecretStreams opens one SDS stream per name on socket, each on a
// connection of its own, waits until each serves its secret, reads
// process pid's memory and closes them.
func memPerSecretStreams(ctx context.Context, pid int, socket string, names []string) (procMem, error) {
	var streams []*sdsFollower
	defer func() {
		for _, f := range streams {
			f.stop()
		}
	}()
	for _, n := range names {
		f, err := followSDS(ctx, socket, []string{n})
		if err != nil {
			return procMem{}, err
		}
		streams = append(streams, f)
	}
	for i, f := range streams {
		if _, err := f.until(ctx, names[i], func(s servedSecrets) bool { return s[names[i]] != nil }); err != nil {
			return procMem{}, err
		}
	}
	return memOf(pid)
}

// heldNames are the SPIFFE IDs of the identities seeded for agent node k
// (seedAgentCost).
func heldNames(k, ids int) []string {
	names := make([]string, ids)
	for i := range names {
		names[i] = "spiffe://" + TrustDomain + "/" + fmt.Sprintf("id-%d-%d", k, i)
	}
	return names
}

// agentMemServing starts an agent for node, waits until its SDS socket
// serves every secret of names, reads its memory and stops it.
func agentMemServing(ctx context.Context, env *Env, slim bool, xdsAddr, node, token string, pin []byte, names []string) (procMem, error) {
	p, socket, err := startAgentProc(ctx, env, slim, xdsAddr, node, token, pin)
	if err != nil {
		return procMem{}, err
	}
	defer p.Stop()
	sds, err := followSDS(ctx, socket, names)
	if err != nil {
		return procMem{}, err
	}
	defer sds.stop()
	if _, err := sds.until(ctx, fmt.Sprintf("%d secrets", len(names)), func(s servedSecrets) bool {
		for _, n := range names {
			if s[n] == nil {
				return false
			}
		}
		return true
	}); err != nil {
		return procMem{}, fmt.Errorf("%w; agent: %s", err, p.stderrTail())
	}
	return memOf(p.Pid())
}

func fileSize(path string) (int64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// fromIssuer counts the chains whose issuing certificate has serial
// issuer (hex).
func fromIssuer(chains [][]*x509.Certificate, issuer string) int {
	n := 0
	for _, c := range chains {
		if len(c) > 1 && fmt.Sprintf("%x", c[1].SerialNumber) == issuer {
			n++
		}
	}
	return n
}

// spareName is the k-th identity no node holds, revoked in turn.
func spareName(k int) string { return fmt.Sprintf("spare-%d", k) }

// seedAgentCost seeds ids identities on agent node agent-0, agent node
// agent-empty with none, and spares identities no node holds; with full,
// also ids other identities on agent node full-1 and agent node
// full-empty with none. It returns the nodes' join tokens in that order.
func seedAgentCost(ctx context.Context, dataDir string, ids, spares int, full bool) ([4]string, error) {
	var tokens [4]string
	reg, _, closeStore, err := openRegistry(ctx, dataDir, false, EtcdTarget{})
	if err != nil {
		return tokens, err
	}
	defer closeStore()
	held := [2][]string{make([]string, ids), make([]string, ids)}
	err = parallel(ctx, 2*ids+spares, 16, func(i int) error {
		var name string
		switch {
		case i < 2*ids:
			if i >= ids && !full {
				return nil
			}
			name = fmt.Sprintf("id-%d-%d", i/ids, i%ids)
			held[i/ids][i%ids] = name
		default:
			name = spareName(i - 2*ids)
		}
		_, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: name}, "bench")
		return err
	})
	if err != nil {
		return tokens, fmt.Errorf("seed identities: %w", err)
	}
	nodes := []registry.AddNode{{Name: "agent-0", Identities: held[0], Agent: true}, {Name: "agent-empty", Agent: true}}
	if full {
		nodes = append(nodes, registry.AddNode{Name: "full-1", Identities: held[1], Agent: true}, registry.AddNode{Name: "full-empty", Agent: true})
	}
	for i, n := range nodes {
		_, tok, err := reg.AddNode(ctx, n, "bench")
		if err != nil {
			return tokens, fmt.Errorf("seed agent node %s: %w", n.Name, err)
		}
		tokens[i] = tok.Token
	}
	return tokens, nil
}

// startAgentProc starts the agent for node with its join token and
// meshca's pinned CA, in a data directory of its own under env.Dir, and
// returns it with its SDS socket's path: env.Agent when slim, else
// `meshca agent`.
func startAgentProc(ctx context.Context, env *Env, slim bool, xdsAddr, node, token string, pin []byte) (*Proc, string, error) {
	dir := filepath.Join(env.Dir, node)
	if err := os.MkdirAll(filepath.Join(dir, "in"), 0o700); err != nil {
		return nil, "", err
	}
	caFile, tokenFile := filepath.Join(dir, "in", "ca.pem"), filepath.Join(dir, "in", "token")
	if err := os.WriteFile(caFile, pin, 0o600); err != nil {
		return nil, "", err
	}
	if err := os.WriteFile(tokenFile, []byte(token+"\n"), 0o600); err != nil {
		return nil, "", err
	}
	socket := filepath.Join(dir, "sock", "sds.sock")
	if err := os.MkdirAll(filepath.Dir(socket), 0o700); err != nil {
		return nil, "", err
	}
	bin, args := env.Meshca, []string{"agent"}
	if slim {
		bin, args = env.Agent, nil
	}
	args = append(args, "--server", xdsAddr, "--node", node, "--token-file", tokenFile,
		"--ca-file", caFile, "--data-dir", filepath.Join(dir, "data"), "--sds-socket", socket)
	p, err := start(ctx, bin, args, nil)
	if err != nil {
		return nil, "", err
	}
	p.term = true
	return p, socket, nil
}

// waitServerRekey waits until the rotation started after before has
// switched issuance and meshca has re-keyed every server-key leaf.
func waitServerRekey(ctx context.Context, admin *adminClient, before api.CA) (api.CA, error) {
	begin := time.Now()
	for {
		c, err := admin.ca(ctx)
		if err != nil {
			return c, err
		}
		r := c.Rotation
		if c.Issuer.Serial != before.Issuer.Serial && r != nil && r.Leaves > 0 && r.Reissued+r.ReissueFailed >= r.Leaves {
			if r.ReissueFailed > 0 {
				return c, fmt.Errorf("meshca failed to re-key %d server-key certificates", r.ReissueFailed)
			}
			return c, nil
		}
		if c.Rotation == nil && c.Issuer.Serial != before.Issuer.Serial {
			return c, errors.New("the rotation ended before the agents re-keyed: it should wait for them")
		}
		if time.Since(begin) > 10*time.Minute {
			return c, fmt.Errorf("server-key re-key not done after 10m: %+v", r)
		}
		if err := pause(ctx, 20*time.Millisecond); err != nil {
			return c, err
		}
	}
}

// threadsCPU returns the CPU time process pid's live threads have run, to
// the nanosecond (the first field of each /proc/PID/task/TID/schedstat),
// where /proc/PID/stat counts 10 ms ticks: a renewal costs less than one.
// A Go process keeps its threads, so a delta over a round is its CPU.
func threadsCPU(pid int) (time.Duration, error) {
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return 0, err
	}
	var total time.Duration
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/schedstat", pid, t.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // the thread ended
		}
		if err != nil {
			return 0, err
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return 0, fmt.Errorf("/proc/%d/task/%s/schedstat: empty", pid, t.Name())
		}
		ns, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/task/%s/schedstat: %w", pid, t.Name(), err)
		}
		total += time.Duration(ns)
	}
	return total, nil
}

// procMem is a process's memory as /proc/PID/status gives it: resident
// (anonymous + file-backed + shared memory) and its peak.
type procMem struct{ rss, hwm, anon, file int64 }

// idleWithin bounds memIdle's wait.
const idleWithin = 3 * time.Second

// memIdle reads process pid's memory until its anonymous memory is at
// least 1 MiB below at's (the agent returned what it freed once idle) and
// no longer falls, or idleWithin has passed, and says how long after the
// first read.
func memIdle(ctx context.Context, pid int, at procMem) (procMem, time.Duration, error) {
	start := time.Now()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	prev := at
	for {
		select {
		case <-ctx.Done():
			return procMem{}, 0, ctx.Err()
		case <-tick.C:
		}
		m, err := memOf(pid)
		if err != nil {
			return procMem{}, 0, err
		}
		if (m.anon <= at.anon-1<<20 && m.anon >= prev.anon) || time.Since(start) >= idleWithin {
			return m, time.Since(start), nil
		}
		prev = m
	}
}

func (m procMem) String() string {
	return fmt.Sprintf("VmRSS %s (anonymous %s, file %s), VmHWM %s", fmtBytes(m.rss), fmtBytes(m.anon), fmtBytes(m.file), fmtBytes(m.hwm))
}

// memOf reads process pid's memory (Linux).
func memOf(pid int) (procMem, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return procMem{}, err
	}
	var (
		m    procMem
		errs []error
	)
	for name, dst := range map[string]*int64{"VmRSS": &m.rss, "VmHWM": &m.hwm, "RssAnon": &m.anon, "RssFile": &m.file} {
		found := false
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, name+":"); ok {
				kb, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 10, 64)
				*dst, found = kb<<10, true
				errs = append(errs, err)
			}
		}
		if !found {
			errs = append(errs, fmt.Errorf("/proc/%d/status: no %s", pid, name))
		}
	}
	return m, errors.Join(errs...)
}

// servedSecrets is what an SDS stream was last sent, by secret name.
type servedSecrets map[string]*tlsv3.Secret

// leaves returns the parsed chain of each of names, in order; nil unless
// every one is served.
func (s servedSecrets) leaves(names []string) [][]*x509.Certificate {
	out := make([][]*x509.Certificate, len(names))
	for i, name := range names {
		chain := parsePEMCerts(s[name].GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if len(chain) == 0 {
			return nil
		}
		out[i] = chain
	}
	return out
}

// crlLists reports whether the bundle secret's CRLs list every serial
// (hex).
func (s servedSecrets) crlLists(bundle string, serials []string) bool {
	revoked := map[string]bool{}
	data := s[bundle].GetValidationContext().GetCrl().GetInlineBytes()
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		crl, err := x509.ParseRevocationList(block.Bytes)
		if err != nil {
			return false
		}
		for _, e := range crl.RevokedCertificateEntries {
			revoked[fmt.Sprintf("%x", e.SerialNumber)] = true
		}
	}
	for _, s := range serials {
		n, ok := new(big.Int).SetString(s, 16)
		if !ok || !revoked[fmt.Sprintf("%x", n)] {
			return false
		}
	}
	return true
}

func parsePEMCerts(data []byte) []*x509.Certificate {
	var out []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil
		}
		out = append(out, c)
	}
	return out
}

// sdsFollower is one state-of-the-world SDS stream on a Unix socket, as
// Envoy opens it, acknowledging every answer.
type sdsFollower struct {
	conn    *grpc.ClientConn
	cancel  context.CancelFunc
	mu      sync.Mutex
	served  servedSecrets
	err     error
	changed chan struct{} // closed and replaced at each answer
}

// followSDS opens the stream for names, waiting for the socket to appear.
func followSDS(ctx context.Context, socket string, names []string) (*sdsFollower, error) {
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	f := &sdsFollower{conn: conn, cancel: cancel, served: servedSecrets{}, changed: make(chan struct{})}
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(sctx, grpc.WaitForReady(true))
	if err != nil {
		f.stop()
		return nil, fmt.Errorf("SDS stream on %s: %w", socket, err)
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resource.SecretType, ResourceNames: names}
	if err := stream.Send(req); err != nil {
		f.stop()
		return nil, err
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err == nil {
				err = stream.Send(&discoveryv3.DiscoveryRequest{Node: req.Node, TypeUrl: req.TypeUrl, ResourceNames: names,
					VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
			}
			got := servedSecrets{}
			for _, r := range resp.GetResources() {
				s := new(tlsv3.Secret)
				if uerr := r.UnmarshalTo(s); uerr != nil && err == nil {
					err = uerr
				}
				got[s.GetName()] = s
			}
			f.mu.Lock()
			if err != nil {
				f.err = err
			} else {
				f.served = got
			}
			close(f.changed)
			f.changed = make(chan struct{})
			f.mu.Unlock()
			if err != nil {
				return
			}
		}
	}()
	return f, nil
}

// until waits, up to two minutes, until what the stream was last sent
// satisfies ok, and returns it.
func (f *sdsFollower) until(ctx context.Context, what string, ok func(servedSecrets) bool) (servedSecrets, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	for {
		f.mu.Lock()
		served, err, changed := f.served, f.err, f.changed
		f.mu.Unlock()
		if ok(served) {
			return served, nil
		}
		if err != nil {
			return nil, fmt.Errorf("SDS stream ended before %s: %w", what, err)
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, fmt.Errorf("SDS socket never served %s: %w", what, ctx.Err())
		}
	}
}

// current returns what the stream was last sent.
func (f *sdsFollower) current() servedSecrets {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.served
}

func (f *sdsFollower) stop() {
	f.cancel()
	f.conn.Close()
}
