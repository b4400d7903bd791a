// Package telemetry keeps what proxies send to meshca's sinks: access-log
// entries in a bounded ring per node, and each node's latest stats. The
// xDS server feeds it from Envoy's access-log and metrics services; the
// admin API reads the logs and the metrics endpoint re-exposes the stats.
package telemetry

import (
	"sort"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
)

// RingSize is how many access-log entries are kept per node.
const RingSize = 1000

// Entry is one access-log entry, reduced to what an operator reads.
type Entry struct {
	Seq       uint64    `json:"seq"` // per node, from 1
	Node      string    `json:"node"`
	Time      time.Time `json:"time"`
	Method    string    `json:"method,omitempty"`
	Authority string    `json:"authority,omitempty"`
	Path      string    `json:"path,omitempty"`
	Status    uint32    `json:"status,omitempty"`
	Duration  string    `json:"duration,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
	Peer      string    `json:"peer,omitempty"` // downstream address
	Protocol  string    `json:"protocol,omitempty"`
	arrival   uint64
}

// Store holds the telemetry of every node. It is safe for concurrent use.
type Store struct {
	mu       sync.Mutex
	logs     map[string]*ring
	stats    map[string]stats
	received uint64 // arrival counter across nodes
}

type ring struct {
	entries []Entry
	next    uint64
}

type stats struct {
	at       time.Time
	families []*dto.MetricFamily
}

// New returns an empty Store.
func New() *Store { return &Store{logs: map[string]*ring{}, stats: map[string]stats{}} }

// AddLogs appends entries for node, dropping the oldest beyond RingSize.
func (s *Store) AddLogs(node string, entries []Entry) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r := s.logs[node]
	if r == nil {
		r = &ring{}
		s.logs[node] = r
	}
	for _, e := range entries {
		r.next++
		s.received++
		e.Seq, e.Node, e.arrival = r.next, node, s.received
		r.entries = append(r.entries, e)
	}
	if over := len(r.entries) - RingSize; over > 0 {
		r.entries = append(r.entries[:0], r.entries[over:]...)
	}
}

// Logs returns up to limit entries of node with Seq > after, oldest first;
// with node "" the entries of every node, by time. limit <= 0 means all.
func (s *Store) Logs(node string, after uint64, limit int) []Entry {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Entry
	for n, r := range s.logs {
		if node != "" && n != node {
			continue
		}
		for _, e := range r.entries {
			if node == "" || e.Seq > after {
				out = append(out, e)
			}
		}
	}
	if node == "" {
		// Arrival order, not the proxy's timestamps: a proxy cannot push
		// other nodes' entries out of view with times in the future.
		sort.Slice(out, func(i, j int) bool { return out[i].arrival < out[j].arrival })
	}
	if limit > 0 && len(out) > limit {
		out = out[len(out)-limit:]
	}
	return out
}

// Forget drops everything of a node that was revoked or removed.
func (s *Store) Forget(node string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.logs, node)
	delete(s.stats, node)
}

// SetStats replaces the latest stats of node.
func (s *Store) SetStats(node string, at time.Time, families []*dto.MetricFamily) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats[node] = stats{at: at, families: families}
}

// Stats calls fn with each node's latest stats, by node name.
func (s *Store) Stats(fn func(node string, families []*dto.MetricFamily)) {
	s.mu.Lock()
	nodes := make([]string, 0, len(s.stats))
	for n := range s.stats {
		nodes = append(nodes, n)
	}
	snap := make(map[string][]*dto.MetricFamily, len(s.stats))
	for n, st := range s.stats {
		snap[n] = st.families
	}
	s.mu.Unlock()
	sort.Strings(nodes)
	for _, n := range nodes {
		fn(n, snap[n])
	}
}
