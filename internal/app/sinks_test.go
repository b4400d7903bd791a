package app_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	accesslogdata "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshca/meshca/internal/api"
)

func TestSinksAccessLogsAndStats(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("echo")
	cert := m.joined("edge-1", "echo")
	conn := m.dial(cert)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	als, err := accesslogv3.NewAccessLogServiceClient(conn).StreamAccessLogs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	entry := &accesslogdata.HTTPAccessLogEntry{
		CommonProperties: &accesslogdata.AccessLogCommon{StartTime: timestamppb.Now()},
		Request:          &accesslogdata.HTTPRequestProperties{RequestMethod: core.RequestMethod_GET, Authority: "echo.example.com", Path: "/hello"},
		Response:         &accesslogdata.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
	}
	// The identifier claims another node: entries are filed under the
	// authenticated one.
	if err := als.Send(&accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &core.Node{Id: "someone-else"}, LogName: "meshca"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: []*accesslogdata.HTTPAccessLogEntry{entry}}},
	}); err != nil {
		t.Fatal(err)
	}
	ms, err := metricsv3.NewMetricsServiceClient(conn).StreamMetrics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ms.Send(&metricsv3.StreamMetricsMessage{EnvoyMetrics: []*dto.MetricFamily{{
		Name: proto.String("cluster.echo.upstream_rq_total"), Type: dto.MetricType_COUNTER.Enum(),
		Metric: []*dto.Metric{{Counter: &dto.Counter{Value: proto.Float64(42)}}},
	}}}); err != nil {
		t.Fatal(err)
	}

	// Each sink answers a closed stream once it has taken every message.
	if _, err := als.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	if _, err := ms.CloseAndRecv(); err != nil {
		t.Fatal(err)
	}
	var logs []api.LogEntry
	m.admin("GET", api.PathLogs+"?node=edge-1", nil, &logs, http.StatusOK)
	text := scrape(t, m)
	v, ok := sample(t, text, `envoy_cluster_echo_upstream_rq_total{node="edge-1"}`)
	if len(logs) != 1 || !ok || v != 42 {
		t.Fatalf("sinks: logs %+v, stat %v %v", logs, v, ok)
	}
	if logs[0].Path != "/hello" || logs[0].Status != 200 || logs[0].Node != "edge-1" {
		t.Fatalf("entry %+v", logs[0])
	}
	// And meshca logs shows it.
	out, errOut, err := m.cli("logs", "--node", "edge-1")
	if err != nil {
		t.Fatalf("meshca logs: %v %s", err, errOut)
	}
	if !strings.Contains(out, "edge-1 GET echo.example.com/hello 200") {
		t.Fatalf("meshca logs printed %q", out)
	}
	var other []api.LogEntry
	m.admin("GET", api.PathLogs+"?node=someone-else", nil, &other, http.StatusOK)
	if len(other) != 0 || strings.Contains(scrape(t, m), `node="someone-else"`) {
		t.Fatal("telemetry filed under the node the proxy claimed")
	}
	// Without a client certificate the sinks are closed.
	if s, err := accesslogv3.NewAccessLogServiceClient(m.dial(nil)).StreamAccessLogs(ctx); err == nil {
		s.Send(&accesslogv3.StreamAccessLogsMessage{})
		if _, err := s.CloseAndRecv(); err == nil {
			t.Fatal("access-log stream accepted without a node certificate")
		}
	}
}
