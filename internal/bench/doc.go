// Package bench is meshca's benchmark harness: it measures each figure of
// the performance goals together with a baseline run on the same machine in
// the same run, and writes figures, baselines and ratios to BENCHMARKS.md.
//
// Sections that need more than one process (a load client, cfssl's own API
// server, thousands of xDS clients, a naive go-control-plane server, an
// etcd cluster for meshca replicas, the node agents of the agent storm)
// re-run the harness binary as a worker (MESHCA_BENCH_WORKER=NAME). Workers talk
// to the parent over stdin/stdout lines and stop when stdin closes; they
// are killed if the parent dies, so none outlives the run.
//
// # Caveats
//
//   - Figures are for comparing ratios measured in one run; absolute times
//     depend on the machine, which the report names.
//   - Quick mode (make test) runs every section at a tiny size so the
//     harness cannot rot; it asserts that each section produced its rows,
//     never a timing.
package bench
