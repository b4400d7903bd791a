// Command meshca-bench runs meshca's benchmark harness and writes
// BENCHMARKS.md. `make bench` runs it; `make test` runs it in quick mode.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/meshca/meshca/internal/bench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if worker, err := bench.WorkerFromEnv(ctx, os.Args[1:]); worker {
		if err != nil {
			fmt.Fprintln(os.Stderr, "meshca-bench worker:", err)
			os.Exit(1)
		}
		return
	}
	cfg := bench.Config{Log: os.Stderr}
	only := flag.String("only", "", "comma-separated sections to run (default all)")
	flag.StringVar(&cfg.Meshca, "meshca", "bin/meshca", "meshca binary the multi-process sections start")
	flag.StringVar(&cfg.Agent, "agent", "bin/meshca-agent", `meshca-agent binary agentcost measures beside meshca agent ("" measures only meshca agent)`)
	flag.StringVar(&cfg.Out, "out", "BENCHMARKS.md", `report file ("" writes none)`)
	flag.BoolVar(&cfg.Quick, "quick", false, "tiny sizes: a smoke run whose figures mean nothing")
	flag.Parse()
	if *only != "" {
		cfg.Only = strings.Split(*only, ",")
	}
	if err := bench.Run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "meshca-bench:", err)
		os.Exit(1)
	}
}
