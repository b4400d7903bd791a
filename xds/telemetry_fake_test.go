package xds

import (
	"slices"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// fakeTelemetry is a TelemetrySink that keeps everything filed, per node.
type fakeTelemetry struct {
	mu    sync.Mutex
	logs  map[string][]AccessLog
	stats map[string][]*dto.MetricFamily
}

var _ TelemetrySink = (*fakeTelemetry)(nil)

func newFakeTelemetry() *fakeTelemetry {
	return &fakeTelemetry{logs: map[string][]AccessLog{}, stats: map[string][]*dto.MetricFamily{}}
}

func (f *fakeTelemetry) AddLogs(node string, logs []AccessLog) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.logs[node] = append(f.logs[node], logs...)
}

func (f *fakeTelemetry) SetStats(node string, _ time.Time, families []*dto.MetricFamily) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats[node] = families
}

func (f *fakeTelemetry) Forget(node string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.logs, node)
	delete(f.stats, node)
}

// logsOf returns the paths of the access-log entries filed under node.
func logsOf(tel *fakeTelemetry, node string) []string {
	tel.mu.Lock()
	defer tel.mu.Unlock()
	var out []string
	for _, e := range tel.logs[node] {
		out = append(out, e.Path)
	}
	return out
}

// statsNodes returns the nodes with metrics filed, sorted.
func statsNodes(tel *fakeTelemetry) []string {
	tel.mu.Lock()
	defer tel.mu.Unlock()
	out := make([]string, 0, len(tel.stats))
	for node := range tel.stats {
		out = append(out, node)
	}
	slices.Sort(out)
	return out
}
