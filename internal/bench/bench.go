package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Config configures a harness run.
type Config struct {
	// Meshca is the path of the meshca binary that multi-process sections
	// start. Required by those sections.
	Meshca string
	// Agent is the path of the meshca-agent binary (the agent alone):
	// agentcost measures it, with `meshca agent` beside. "" measures
	// `meshca agent` only.
	Agent string
	// Self is the path of the harness binary, re-run for workers. Default
	// os.Executable().
	Self string
	// Out is the report's path; "" writes no file.
	Out string
	// Quick runs every section at a tiny size (a smoke run).
	Quick bool
	// Only names the sections to run; empty runs all.
	Only []string
	// WorkDir holds data directories and certificates; default a fresh
	// temporary directory, removed afterwards.
	WorkDir string
	// Log receives progress lines; default io.Discard.
	Log io.Writer
}

// Env is what a section gets.
type Env struct {
	Config
	// Dir is a fresh directory for this section alone.
	Dir string
}

// Logf prints one progress line.
func (e *Env) Logf(format string, args ...any) {
	fmt.Fprintf(e.Log, "%s  "+format+"\n", append([]any{time.Now().Format("15:04:05")}, args...)...)
}

// Section is one part of the report.
type Section struct {
	Name  string // used by -only
	Title string
	Run   func(ctx context.Context, env *Env) (*Report, error)
}

// Sections lists every section, in report order.
var Sections = []Section{
	{Name: "issuance", Title: "Durable issuance in-process", Run: runIssuance},
	{Name: "api", Title: "Issuance through the admin API vs cfssl's API server", Run: runAPI},
	{Name: "fanout", Title: "Trust-bundle fan-out", Run: runFanout},
	{Name: "storm", Title: "Rotation storm", Run: runStorm},
	{Name: "agentstorm", Title: "Rotation storm on agent nodes", Run: runAgentStorm},
	{Name: "agentcost", Title: "The node agent's own cost", Run: runAgentCost},
	{Name: "memory", Title: "Memory per idle stream", Run: runMemory},
	{Name: "startup", Title: "Start to ready", Run: runStartup},
	{Name: "etcd", Title: "Durable issuance on etcd", Run: runEtcdIssuance},
	{Name: "replicas", Title: "Change propagation across replicas", Run: runPropagation},
	{Name: "failover", Title: "Failover of a killed replica's nodes", Run: runFailover},
	{Name: "replicas2", Title: "Issuance and fan-out with two replicas", Run: runTwoReplicas},
}

// ErrNoRows: a section finished without measuring anything.
var ErrNoRows = errors.New("bench: section produced no rows")

// Run runs the selected sections and writes the report. A failing section
// is reported and the others still run; Run returns the first error.
func Run(ctx context.Context, cfg Config) error {
	if cfg.Log == nil {
		cfg.Log = io.Discard
	}
	if cfg.Self == "" {
		self, err := os.Executable()
		if err != nil {
			return fmt.Errorf("bench: own path: %w", err)
		}
		cfg.Self = self
	}
	for _, name := range cfg.Only {
		if !slices.ContainsFunc(Sections, func(s Section) bool { return s.Name == name }) {
			return fmt.Errorf("bench: unknown section %q (have %s)", name, sectionNames())
		}
	}
	if cfg.WorkDir == "" {
		dir, err := os.MkdirTemp("", "meshca-bench-")
		if err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		defer os.RemoveAll(dir)
		cfg.WorkDir = dir
	}
	machine := readMachine()
	var (
		reports  []*Report
		firstErr error
	)
	for _, s := range Sections {
		if len(cfg.Only) > 0 && !slices.Contains(cfg.Only, s.Name) {
			continue
		}
		env := &Env{Config: cfg, Dir: filepath.Join(cfg.WorkDir, s.Name)}
		if err := os.MkdirAll(env.Dir, 0o700); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		env.Logf("section %s: %s", s.Name, s.Title)
		start := time.Now()
		rep, err := s.Run(ctx, env)
		if err == nil && (rep == nil || len(rep.Rows) == 0) {
			err = ErrNoRows
		}
		if err != nil {
			err = fmt.Errorf("section %s: %w", s.Name, err)
			env.Logf("%v", err)
			if firstErr == nil {
				firstErr = err
			}
			rep = &Report{Notes: []string{"**Failed:** " + err.Error()}}
		}
		rep.Name, rep.Title, rep.Took = s.Name, s.Title, time.Since(start)
		fmt.Fprint(cfg.Log, rep.Text())
		reports = append(reports, rep)
	}
	if cfg.Out != "" {
		if err := os.WriteFile(cfg.Out, []byte(Markdown(machine, cfg.Quick, reports)), 0o644); err != nil {
			return fmt.Errorf("bench: write report: %w", err)
		}
	}
	return firstErr
}

func sectionNames() string {
	var names []string
	for _, s := range Sections {
		names = append(names, s.Name)
	}
	return strings.Join(names, ", ")
}
