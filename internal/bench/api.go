package bench

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"
)

// apiGoal is issue 7's goal: meshca's admin API issues at least as many
// certificates per second as cfssl's newcert endpoint.
const apiGoal = 1.0

// apiLevel is one concurrency level's figures for both servers.
type apiLevel struct {
	callers       int
	meshca, cfssl serverRun
}

// serverRun is one server's figures at one level.
type serverRun struct {
	LoadResult
	// cpu is the server process's CPU time (user and system) over its
	// turns.
	cpu time.Duration
}

// cpuPerCert is the server's CPU time per certificate issued.
func (s serverRun) cpuPerCert() time.Duration {
	if s.Requests == 0 {
		return 0
	}
	return s.cpu / time.Duration(s.Requests)
}

// runAPI measures issuance through meshca's admin API against cfssl's own
// API server, both issuing from the same CA, loaded by the same client from
// this process over loopback.
func runAPI(ctx context.Context, env *Env) (*Report, error) {
	plan := apiPlan{
		callers: []int{1, 8, 64},
		rounds:  5,
		turn:    func(c int) Load { return Load{Callers: c, For: time.Second} },
		warmup:  500 * time.Millisecond,
	}
	if env.Quick {
		plan.rounds, plan.warmup = 1, 0
		plan.turn = func(c int) Load { return Load{Callers: c, Count: max(20, c)} }
	}

	caFiles, check, err := writeSharedCA(env.Dir)
	if err != nil {
		return nil, err
	}
	cf, err := StartWorker(ctx, env, "cfssl-serve", "-ca", caFiles.issuer, "-ca-key", caFiles.key)
	if err != nil {
		return nil, err
	}
	defer cf.Stop()
	cfAddr, err := cf.Expect("listening ", 30*time.Second)
	if err != nil {
		return nil, fmt.Errorf("cfssl serve: %w", err)
	}
	m, _, err := StartMeshca(ctx, env, filepath.Join(env.Dir, "data"))
	if err != nil {
		return nil, err
	}
	defer m.Stop()
	if err := importCA(ctx, env.Meshca, m.Admin, caFiles); err != nil {
		return nil, err
	}
	env.Logf("api: cfssl newcert on %s, meshca admin API on %s, same CA", cfAddr, m.Admin)

	cfssl, meshca := newCFSSLTarget(cfAddr, cf.Pid()), newMeshcaTarget(m.Admin, m.Pid())
	targets := []*apiTarget{cfssl, meshca}
	meter, err := newCPUMeter(os.Getpid(), cf.Pid(), m.Pid())
	if err != nil {
		return nil, err
	}
	var levels []apiLevel
	for _, c := range plan.callers {
		res, err := measureLevel(ctx, targets, c, plan)
		if err != nil {
			return nil, err
		}
		for i, t := range targets {
			env.Logf("api: %s, %d callers: %d requests, %.0f certs/s, p50 %s, p99 %s, server CPU %s per cert",
				t.name, c, res[i].Requests, res[i].Rate(), fmtMillis(res[i].P50), fmtMillis(res[i].P99), fmtMillis(res[i].cpuPerCert()))
		}
		levels = append(levels, apiLevel{callers: c, cfssl: res[0], meshca: res[1]})
	}

	others, err := meter.Others(runtime.NumCPU())
	if err != nil {
		return nil, err
	}
	env.Logf("api: other processes used %.0f%% of the machine's CPU meanwhile", 100*others)

	checked := 0
	for _, t := range targets {
		n, err := t.verify(ctx, check)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", t.name, err)
		}
		checked += n
	}
	return apiReport(levels, checked, others, plan), nil
}

// apiPlan sizes the section.
type apiPlan struct {
	callers []int
	// rounds is how many turns each server gets per level; the servers
	// take turns, alternating which goes first.
	rounds int
	turn   func(callers int) Load
	// warmup precedes each server's turns at each level; its samples are
	// dropped.
	warmup time.Duration
}

// measureLevel loads each target with c callers in alternating turns, so
// that any other load on the machine falls on both alike, and pools each
// target's turns and the CPU time its process spent in them. Each target
// keeps one client, and so its connections, for the whole level.
func measureLevel(ctx context.Context, targets []*apiTarget, c int, p apiPlan) ([]serverRun, error) {
	clients := make([]*http.Client, len(targets))
	for i, t := range targets {
		clients[i] = loadClient(c)
		defer clients[i].CloseIdleConnections()
		if p.warmup > 0 {
			if _, err := t.load(ctx, clients[i], Load{Callers: c, For: p.warmup}); err != nil {
				return nil, fmt.Errorf("%s, %d callers, warm-up: %w", t.name, c, err)
			}
		}
	}
	turns := make([][]LoadResult, len(targets))
	cpu := make([]time.Duration, len(targets))
	for r := range p.rounds {
		for k := range targets {
			i := (k + r) % len(targets)
			before, err := cpuOf(targets[i].pid)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", targets[i].name, err)
			}
			res, err := targets[i].load(ctx, clients[i], p.turn(c))
			if err != nil {
				return nil, fmt.Errorf("%s, %d callers: %w", targets[i].name, c, err)
			}
			after, err := cpuOf(targets[i].pid)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", targets[i].name, err)
			}
			turns[i] = append(turns[i], res)
			cpu[i] += after - before
		}
	}
	out := make([]serverRun, len(targets))
	for i := range targets {
		out[i] = serverRun{LoadResult: CombineLoads(turns[i]...), cpu: cpu[i]}
	}
	return out, nil
}

func apiReport(levels []apiLevel, checked int, others float64, p apiPlan) *Report {
	var size string
	if l := p.turn(1); l.Count > 0 {
		size = fmt.Sprintf("%d requests (or one per caller, if more) per server and level", l.Count)
	} else {
		size = fmt.Sprintf("%d turns of %s per server and level, the servers alternating", p.rounds, l.For)
	}
	if p.warmup > 0 {
		size += fmt.Sprintf(", after a %s warm-up each whose samples are dropped", p.warmup)
	}
	rep := &Report{
		Intro: "Certificates issued per second, each with a new P-256 key generated by the server, through " +
			"meshca's admin API (`POST /v1/identities` with a new name per request) and through cfssl's own " +
			"API server (`/api/v1/cfssl/newcert`, built from the cfssl v1.6.5 library as `cfssl serve` builds it: " +
			"universal signer from CA files, a 1h server+client auth profile, no database, no lint). Both issue " +
			"from the same intermediate, which the harness generated and imported into meshca. One load client " +
			"in the harness process drives both in turn over loopback HTTP/1.1 keep-alive: N callers each send " +
			"requests back to back for " + size + "; latency is per request, send to answer decoded.",
	}
	for _, lv := range levels {
		who := fmt.Sprintf("%d callers", lv.callers)
		if lv.callers == 1 {
			who = "1 caller"
		}
		ratio := 0.0
		if r := lv.cfssl.Rate(); r > 0 {
			ratio = lv.meshca.Rate() / r
		}
		rep.Rows = append(rep.Rows,
			Row{Figure: "certs/s, " + who, Value: certRate(lv.meshca), Baseline: certRate(lv.cfssl), Ratio: ratio,
				Goal: fmt.Sprintf("≥ %g×", apiGoal), Verdict: Judge(ratio >= apiGoal)},
			Row{Figure: "p50 latency, " + who, Value: fmtMillis(lv.meshca.P50), Baseline: fmtMillis(lv.cfssl.P50), Verdict: Info},
			Row{Figure: "p99 latency, " + who, Value: fmtMillis(lv.meshca.P99), Baseline: fmtMillis(lv.cfssl.P99), Verdict: Info},
			Row{Figure: "server CPU per certificate, " + who, Value: fmtMillis(lv.meshca.cpuPerCert()),
				Baseline: fmtMillis(lv.cfssl.cpuPerCert()), Verdict: Info},
		)
	}
	var counts []string
	for _, lv := range levels {
		counts = append(counts, fmt.Sprintf("%d: %d vs %d", lv.callers, lv.meshca.Requests, lv.cfssl.Requests))
	}
	rep.Notes = []string{
		"The two requests do different work. meshca's registers the identity, generates the key, signs once on " +
			"cfssl's policy, lints the signed certificate with zlint, seals the key, and commits identity, " +
			"certificate and two audit records in one fsync'd bbolt transaction (group commit) before it answers. " +
			"cfssl's generates key and CSR, verifies the CSR, signs once, and returns certificate, key and CSR; it " +
			"keeps nothing and lints nothing.",
		"A failed request fails the section; none is counted. meshca answers with the certificate's serial, not " +
			"its PEM, so after the timed runs the harness fetched every certificate meshca issued " +
			"(`GET /v1/certs/NAME`) and parsed every one cfssl returned, and checked each chains to the shared CA, " +
			"names spiffe://" + TrustDomain + "/NAME, lives 1h and allows server and client auth: " +
			fmt.Sprintf("%d certificates checked.", checked),
		fmt.Sprintf("Measured requests per level, callers: meshca vs cfssl — %s. The load client and both servers "+
			"share this machine's %d cores, so work elsewhere on it lowers every figure; server CPU per "+
			"certificate (each server process's user and system time over its turns, from /proc, divided by the "+
			"certificates it issued) is the figure such load disturbs least. Other processes used %.0f%% of the "+
			"machine's CPU while the section measured.", strings.Join(counts, "; "), runtime.NumCPU(), 100*others),
	}
	return rep
}

// importCA makes meshca issue from the shared CA the way an operator
// would: `meshca ca import` against the admin API, before any identity.
func importCA(ctx context.Context, meshca, admin string, f sharedCAFiles) error {
	cmd := exec.CommandContext(ctx, meshca, "ca", "import", "--admin", admin, "--cert", f.chain, "--key", f.key)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("meshca ca import: %w: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

func certRate(r serverRun) string { return fmt.Sprintf("%.0f certs/s", r.Rate()) }

func fmtMillis(d time.Duration) string {
	return fmt.Sprintf("%.2f ms", float64(d)/float64(time.Millisecond))
}
