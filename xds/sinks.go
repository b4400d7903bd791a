package xds

import (
	"errors"
	"fmt"
	"io"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/text"
)

// maxLogBatch bounds one access-log message; larger batches are cut.
const maxLogBatch = 1000

// sinks serves Envoy's access-log and metrics services on the xDS port.
// Entries are filed under the authenticated node, never under the
// identifier the proxy sends.
type sinks struct {
	accesslogv3.UnimplementedAccessLogServiceServer
	metricsv3.UnimplementedMetricsServiceServer
	s *Server
}

func (k sinks) StreamAccessLogs(stream accesslogv3.AccessLogService_StreamAccessLogsServer) error {
	node, ok := nodeFrom(stream.Context())
	if !ok {
		return status.Error(codes.Unauthenticated, "stream has no authenticated node")
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&accesslogv3.StreamAccessLogsResponse{})
		}
		if err != nil {
			return err
		}
		http := msg.GetHttpLogs().GetLogEntry()
		if len(http) > maxLogBatch {
			http = http[:maxLogBatch]
		}
		entries := make([]AccessLog, 0, len(http))
		for _, e := range http {
			c := e.GetCommonProperties()
			entry := AccessLog{
				Time:      c.GetStartTime().AsTime(),
				Method:    e.GetRequest().GetRequestMethod().String(),
				Authority: text.Clip(e.GetRequest().GetAuthority(), 256),
				Path:      text.Clip(e.GetRequest().GetPath(), 512),
				Status:    e.GetResponse().GetResponseCode().GetValue(),
				Upstream:  text.Clip(address(c.GetUpstreamRemoteAddress()), 128),
				Peer:      text.Clip(address(c.GetDownstreamRemoteAddress()), 128),
				Protocol:  e.GetProtocolVersion().String(),
			}
			if d := c.GetTimeToLastDownstreamTxByte(); d != nil {
				entry.Duration = d.AsDuration().String()
			}
			entries = append(entries, entry)
		}
		tcp := msg.GetTcpLogs().GetLogEntry()
		if len(tcp) > maxLogBatch {
			tcp = tcp[:maxLogBatch]
		}
		for _, e := range tcp {
			c := e.GetCommonProperties()
			entries = append(entries, AccessLog{Time: c.GetStartTime().AsTime(), Protocol: "TCP",
				Upstream: text.Clip(address(c.GetUpstreamRemoteAddress()), 128), Peer: text.Clip(address(c.GetDownstreamRemoteAddress()), 128)})
		}
		if len(entries) > 0 {
			k.s.file(node, func(t TelemetrySink) { t.AddLogs(node, entries) })
		}
	}
}

func (k sinks) StreamMetrics(stream metricsv3.MetricsService_StreamMetricsServer) error {
	node, ok := nodeFrom(stream.Context())
	if !ok {
		return status.Error(codes.Unauthenticated, "stream has no authenticated node")
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return stream.SendAndClose(&metricsv3.StreamMetricsResponse{})
		}
		if err != nil {
			return err
		}
		k.s.file(node, func(t TelemetrySink) { t.SetStats(node, k.s.cfg.Clock.Now(), msg.GetEnvoyMetrics()) })
	}
}

// file runs fn to file what node sent, unless the node was removed: a
// removal drops the node's permissions (setAllowed, under allowedMu) before
// it forgets its telemetry, so what is filed under the read lock is
// forgotten with it, and nothing is filed after.
func (s *Server) file(node string, fn func(TelemetrySink)) {
	if s.cfg.Telemetry == nil {
		return
	}
	s.allowedMu.RLock()
	defer s.allowedMu.RUnlock()
	if _, ok := s.allowed[node]; ok {
		fn(s.cfg.Telemetry)
	}
}

func address(a *corev3.Address) string {
	if sa := a.GetSocketAddress(); sa != nil {
		return fmt.Sprintf("%s:%d", sa.GetAddress(), sa.GetPortValue())
	}
	return ""
}
