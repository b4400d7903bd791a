package app

import (
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/meshca/meshca/internal/telemetry"
	"github.com/meshca/meshca/xds"
)

// telemetrySink files what xds receives from proxies in the telemetry
// store the admin API reads.
type telemetrySink struct{ tel *telemetry.Store }

var _ xds.TelemetrySink = telemetrySink{}

func (s telemetrySink) AddLogs(node string, logs []xds.AccessLog) {
	entries := make([]telemetry.Entry, len(logs))
	for i, l := range logs {
		entries[i] = telemetry.Entry{
			Time: l.Time, Method: l.Method, Authority: l.Authority, Path: l.Path, Status: l.Status,
			Duration: l.Duration, Upstream: l.Upstream, Peer: l.Peer, Protocol: l.Protocol,
		}
	}
	s.tel.AddLogs(node, entries)
}

func (s telemetrySink) SetStats(node string, at time.Time, families []*dto.MetricFamily) {
	s.tel.SetStats(node, at, families)
}

func (s telemetrySink) Forget(node string) { s.tel.Forget(node) }
