package bench

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/api"
)

// serverCounts are meshca's own counters, read from its /metrics and
// GET /v1/ca around a change, to tell what the server did meanwhile
// besides the push: collect garbage, issue certificates (a rotation that
// switched issuance re-keys every leaf), commit, push.
type serverCounts struct {
	gcs       float64 // go_gc_duration_seconds_count
	allocated float64 // go_memstats_alloc_bytes_total
	issued    float64 // meshca_certificates_issued_total, all labels
	commits   float64 // meshca_store_commit_duration_seconds_count
	acked     float64 // meshca_xds_push_duration_seconds_count: pushes acknowledged
	renewed   float64 // meshca_certificates_renewed_total, all labels
	phase     string  // the CA rotation's phase, "" when none
	// phaseSince is when the rotation entered phase, by meshca's clock.
	phaseSince time.Time
}

// probeMeshca reads meshca's counters through its admin API at admin.
func probeMeshca(ctx context.Context, admin string) (serverCounts, error) {
	var c serverCounts
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/metrics", nil)
	if err != nil {
		return c, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		name := line[:i]
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		var into *float64
		switch name {
		case "go_gc_duration_seconds_count":
			into = &c.gcs
		case "go_memstats_alloc_bytes_total":
			into = &c.allocated
		case "meshca_certificates_issued_total":
			into = &c.issued
		case "meshca_certificates_renewed_total":
			into = &c.renewed
		case "meshca_store_commit_duration_seconds_count":
			into = &c.commits
		case "meshca_xds_push_duration_seconds_count":
			into = &c.acked
		default:
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			return c, fmt.Errorf("metric %s: %w", name, err)
		}
		*into += v
	}
	if err := sc.Err(); err != nil {
		return c, err
	}
	req, err = http.NewRequestWithContext(ctx, http.MethodGet, "http://"+admin+"/v1/ca", nil)
	if err != nil {
		return c, err
	}
	resp2, err := http.DefaultClient.Do(req)
	if err != nil {
		return c, err
	}
	defer resp2.Body.Close()
	var ca api.CA
	if err := json.NewDecoder(resp2.Body).Decode(&ca); err != nil {
		return c, fmt.Errorf("GET /v1/ca: %w", err)
	}
	if ca.Rotation != nil {
		c.phase, c.phaseSince = ca.Rotation.Phase, ca.Rotation.PhaseSince
	}
	return c, nil
}

// delta tells what changed from c to after; the change was triggered at
// start and reached the last stream at last.
func (c serverCounts) delta(after serverCounts, start, last time.Time) string {
	phase := func(p string) string {
		if p == "" {
			return "none"
		}
		return p
	}
	out := fmt.Sprintf("GC cycles +%.0f, allocated +%.0f MiB, certificates issued +%.0f and renewed +%.0f, commits +%.0f, pushes acknowledged +%.0f, rotation phase %s → %s",
		after.gcs-c.gcs, (after.allocated-c.allocated)/(1<<20), after.issued-c.issued, after.renewed-c.renewed, after.commits-c.commits,
		after.acked-c.acked, phase(c.phase), phase(after.phase))
	if after.phase != c.phase && after.phase != "" && !after.phaseSince.IsZero() {
		out += fmt.Sprintf(" (entered %s after the trigger; last stream at %s)", fmtDur(after.phaseSince.Sub(start)), fmtDur(last.Sub(start)))
	}
	return out
}
