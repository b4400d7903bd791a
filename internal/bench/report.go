package bench

import (
	"bufio"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"
)

// Verdict says whether a figure meets its goal.
type Verdict string

const (
	Met    Verdict = "met"
	NotMet Verdict = "not met"
	Info   Verdict = "" // a figure with no goal of its own (growth, parts)
)

// Row is one measured figure beside its same-run baseline.
type Row struct {
	Figure   string  // what was measured
	Value    string  // meshca's figure, formatted with its unit
	Baseline string  // the same-run baseline, formatted; "" when none
	Ratio    float64 // value/baseline as the goal reads it; 0 when none
	Goal     string  // e.g. "≥ 0.4×"; "" for information
	Verdict  Verdict
}

// Report is one section's result.
type Report struct {
	Name, Title string
	Took        time.Duration
	// Intro says what was measured and how, in one paragraph.
	Intro string
	Rows  []Row
	// Notes are paragraphs after the table: limits, profiles, caveats.
	Notes []string
}

// Judge returns Met when ok, NotMet otherwise.
func Judge(ok bool) Verdict {
	if ok {
		return Met
	}
	return NotMet
}

// Text renders the report for the progress log.
func (r *Report) Text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "== %s (%s)\n", r.Title, r.Took.Round(time.Millisecond))
	for _, row := range r.Rows {
		fmt.Fprintf(&b, "   %-60s %s", row.Figure, row.Value)
		if row.Baseline != "" {
			fmt.Fprintf(&b, "  baseline %s  ratio %.2f", row.Baseline, row.Ratio)
		}
		if row.Goal != "" {
			fmt.Fprintf(&b, "  goal %s: %s", row.Goal, row.Verdict)
		}
		b.WriteByte('\n')
	}
	for _, n := range r.Notes {
		fmt.Fprintf(&b, "   note: %s\n", n)
	}
	return b.String()
}

// Machine describes where the figures were measured.
type Machine struct {
	CPU   string
	Cores int
	Go    string
	OS    string
	Date  string
}

func readMachine() Machine {
	m := Machine{CPU: "unknown", Cores: runtime.NumCPU(), Go: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH,
		Date: time.Now().UTC().Format("2006-01-02 15:04 UTC")}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	return m
}

// Markdown renders the whole report as BENCHMARKS.md.
func Markdown(m Machine, quick bool, reports []*Report) string {
	var b strings.Builder
	b.WriteString("# Benchmarks\n\n")
	b.WriteString("Written by `make bench` (cmd/meshca-bench). Every figure sits beside a baseline measured on the same machine in the same run; compare ratios, not absolute times, across machines.\n\n")
	fmt.Fprintf(&b, "Machine: %s, %d cores, %s, %s. Run: %s.\n\n", m.CPU, m.Cores, m.Go, m.OS, m.Date)
	if quick {
		b.WriteString("**Quick run (tiny sizes, smoke only): these figures mean nothing.**\n\n")
	}
	b.WriteString("## Summary\n\n| section | figure | meshca | baseline | ratio | goal | verdict |\n|---|---|---|---|---|---|---|\n")
	for _, r := range reports {
		for _, row := range r.Rows {
			if row.Goal == "" {
				continue
			}
			fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s | %s |\n", r.Title, row.Figure, row.Value, orDash(row.Baseline), ratio(row.Ratio), row.Goal, row.Verdict)
		}
	}
	for _, r := range reports {
		fmt.Fprintf(&b, "\n## %s\n\n", r.Title)
		if r.Intro != "" {
			b.WriteString(r.Intro + "\n\n")
		}
		if len(r.Rows) > 0 {
			b.WriteString("| figure | meshca | baseline | ratio | goal | verdict |\n|---|---|---|---|---|---|\n")
			for _, row := range r.Rows {
				fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", row.Figure, row.Value, orDash(row.Baseline), ratio(row.Ratio), orDash(row.Goal), orDash(string(row.Verdict)))
			}
			b.WriteString("\n")
		}
		for _, n := range r.Notes {
			b.WriteString(n + "\n\n")
		}
		fmt.Fprintf(&b, "_Section took %s._\n", r.Took.Round(time.Second))
	}
	return b.String()
}

func orDash(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func ratio(r float64) string {
	if r == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f", r)
}
