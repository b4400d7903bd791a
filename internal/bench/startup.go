package bench

import (
	"context"
	"fmt"
	"path/filepath"
	"time"
)

// runStartup measures how long `meshca server` takes from exec to a 200
// from /readyz on a data directory holding many identities and nodes. The
// baseline is the same binary on an empty data directory that already has
// its CA (the fixed cost of a process start).
func runStartup(ctx context.Context, env *Env) (*Report, error) {
	sizes := []Seed{{Identities: 10_000, Nodes: 1_000}, {Identities: 100_000, Nodes: 10_000}}
	if env.Quick {
		sizes = []Seed{{Identities: 50, Nodes: 5}, {Identities: 100, Nodes: 10}}
	}
	const starts = 3 // best of: the first start also warms the page cache

	empty := filepath.Join(env.Dir, "empty")
	if _, err := SeedDir(ctx, empty, Seed{}); err != nil {
		return nil, err
	}
	base, err := bestStart(ctx, env, empty, starts)
	if err != nil {
		return nil, fmt.Errorf("empty: %w", err)
	}
	env.Logf("empty data directory: ready in %s", base)

	rep := &Report{Intro: "Time from starting `meshca server` to the first 200 from `/readyz` (store opened, CA loaded, every node's " +
		"xDS snapshot built, listeners bound), best of three starts on the same data directory, seeded beforehand through meshca's " +
		"registry. Baseline: the same binary on a data directory holding only its CA."}
	var prev Seed
	var prevTook time.Duration
	for _, s := range sizes {
		dir := filepath.Join(env.Dir, fmt.Sprintf("seed-%d", s.Identities))
		begin := time.Now()
		if _, err := SeedDir(ctx, dir, s); err != nil {
			return nil, err
		}
		env.Logf("seeded %d identities and %d nodes in %s", s.Identities, s.Nodes, time.Since(begin).Round(time.Millisecond))
		took, err := bestStart(ctx, env, dir, starts)
		if err != nil {
			return nil, fmt.Errorf("%d identities: %w", s.Identities, err)
		}
		env.Logf("%d identities, %d nodes: ready in %s", s.Identities, s.Nodes, took)
		row := Row{Figure: fmt.Sprintf("start to ready, %d identities and %d nodes", s.Identities, s.Nodes),
			Value: took.Round(time.Millisecond).String(), Baseline: base.Round(time.Millisecond).String(),
			Ratio: float64(took) / float64(base)}
		if s.Identities >= 100_000 {
			row.Goal, row.Verdict = "≤ 2 s", Judge(took <= 2*time.Second)
		}
		rep.Rows = append(rep.Rows, row)
		if prev.Identities > 0 {
			growth := float64(took-base) / float64(prevTook-base)
			scale := float64(s.Identities) / float64(prev.Identities)
			rep.Rows = append(rep.Rows, Row{Figure: fmt.Sprintf("growth of the time above the baseline, ×%.0f data", scale),
				Value: fmt.Sprintf("×%.1f", growth), Goal: fmt.Sprintf("≤ ×%.0f (linear)", scale), Verdict: Judge(growth <= scale*1.1)})
		}
		prev, prevTook = s, took
	}
	return rep, nil
}

// bestStart starts meshca on dir n times and returns the shortest time to
// ready.
func bestStart(ctx context.Context, env *Env, dir string, n int) (time.Duration, error) {
	var best time.Duration
	for i := 0; i < n; i++ {
		m, took, err := StartMeshca(ctx, env, dir)
		if err != nil {
			return 0, err
		}
		m.Stop()
		if i == 0 || took < best {
			best = took
		}
	}
	return best, nil
}
