package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"runtime"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/api"
)

// runStorm re-keys every identity at once, each held by its own node with
// a live stream, and times it until the last stream has its new
// certificate. Baseline: the raw ceiling's time for as many certificates
// (P-256 keygen + x509.CreateCertificate on every core, nothing else),
// measured in the same run.
func runStorm(ctx context.Context, env *Env) (*Report, error) {
	sizes := []int{1000, 10000}
	if env.Quick {
		sizes = []int{20}
	}
	ceil, err := newCeilingIssuer()
	if err != nil {
		return nil, err
	}
	rep := &Report{Intro: "N identities, each assigned to its own sidecar node, whose one mTLS connection and ADS stream (clients in a " +
		"separate process, as in the fan-out section) hold the trust bundle and the identity's secret. `meshca identity reissue --all` " +
		"(`POST /v1/reissue`) then gives every identity a new key and certificate: issued, linted, sealed, committed with its audit " +
		"record (fsync'd group commit) and pushed. Figure: from the request until the last stream holds a certificate it did not hold " +
		"before (median stream in brackets). Baseline: the raw ceiling's time for N certificates in the same run (P-256 keygen + " +
		"x509.CreateCertificate on every core; no lint, no storage, no push)."}
	for _, n := range sizes {
		fc, err := prepareStorm(ctx, env, fmt.Sprintf("n%d", n), n)
		if err != nil {
			return nil, err
		}

		ceiling, err := measure(ctx, n, 4*runtime.GOMAXPROCS(0), ceil.issue)
		if err != nil {
			return nil, err
		}
		ceilingTime := time.Duration(float64(n) / ceiling.perSec * float64(time.Second))

		m, _, err := StartMeshca(ctx, env, fc.data)
		if err != nil {
			return nil, err
		}
		var reissued api.ReissueProgress
		res, err := fc.change(ctx, env, m.XDS, m.Pid(), WatchIdentity, func() error {
			reissued, err = reissueAll(ctx, m.Admin)
			return err
		})
		m.Stop()
		if err != nil {
			return nil, fmt.Errorf("%d identities: %w", n, err)
		}
		if reissued.Reissued != n || reissued.Failed != 0 {
			return nil, fmt.Errorf("%d identities: meshca re-keyed %d, %d failed", n, reissued.Reissued, reissued.Failed)
		}
		env.Logf("%d identities: last stream after %s (median %s), request returned after %s; ceiling %s; %d responses, at most %d per stream; server CPU %s (%s per re-key)",
			n, fmtDur(res.last), fmtDur(res.median), fmtDur(res.trigger), fmtDur(ceilingTime), res.responses, res.most, fmtDur(res.serverCPU), fmtDur(res.serverCPU/time.Duration(n)))
		row := Row{Figure: fmt.Sprintf("%d identities re-keyed on %d streams", n, n),
			Value:    fmt.Sprintf("%s (%s)", fmtDur(res.last), fmtDur(res.median)),
			Baseline: fmtDur(ceilingTime), Ratio: float64(res.last) / float64(ceilingTime)}
		if n >= 10000 {
			row.Goal, row.Verdict = "≤ 3 s", Judge(res.last <= 3*time.Second)
		}
		rep.Rows = append(rep.Rows, row,
			Row{Figure: fmt.Sprintf("of which until `reissue --all` returned, %d identities", n), Value: fmtDur(res.trigger)},
			Row{Figure: fmt.Sprintf("rate, %d identities (issue + persist + push)", n),
				Value:    fmt.Sprintf("%.0f certs/s", float64(n)/res.last.Seconds()),
				Baseline: fmt.Sprintf("%.0f certs/s", ceiling.perSec), Ratio: float64(n) / res.last.Seconds() / ceiling.perSec},
			Row{Figure: fmt.Sprintf("CPU meanwhile, %d identities: server + client process", n),
				Value: fmt.Sprintf("%s + %s", fmtDur(res.serverCPU), fmtDur(res.clientCPU))},
			Row{Figure: fmt.Sprintf("server CPU per re-key, %d identities", n), Value: fmtDur(res.serverCPU / time.Duration(n))},
		)
	}
	return rep, nil
}

// prepareStorm seeds n identities on n nodes, one each.
func prepareStorm(ctx context.Context, env *Env, name string, n int) (*fanoutCase, error) {
	return seedCase(ctx, env, name, Seed{Identities: n, Nodes: n}, false)
}

// reissueAll calls POST /v1/reissue and reads its progress lines to the
// last.
func reissueAll(ctx context.Context, admin string) (api.ReissueProgress, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+admin+api.PathReissue, strings.NewReader(`{"all":true}`))
	if err != nil {
		return api.ReissueProgress{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return api.ReissueProgress{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return api.ReissueProgress{}, fmt.Errorf("reissue --all: %s", resp.Status)
	}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var p api.ReissueProgress
		if err := json.Unmarshal(sc.Bytes(), &p); err != nil {
			return p, err
		}
		if p.Finished {
			if p.Error != "" {
				return p, fmt.Errorf("reissue --all stopped: %s", p.Error)
			}
			return p, nil
		}
	}
	if err := sc.Err(); err != nil {
		return api.ReissueProgress{}, err
	}
	return api.ReissueProgress{}, fmt.Errorf("reissue --all ended without its outcome")
}
