package xds

import (
	"strings"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	datav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

var (
	alsDesc     = &accesslogv3.AccessLogService_ServiceDesc
	metricsDesc = &metricsv3.MetricsService_ServiceDesc
)

// accessLogs is an access-log message whose identifier claims node.
func accessLogs(node string, paths ...string) *accesslogv3.StreamAccessLogsMessage {
	var entries []*datav3.HTTPAccessLogEntry
	for _, p := range paths {
		entries = append(entries, &datav3.HTTPAccessLogEntry{
			Request:  &datav3.HTTPRequestProperties{Path: p, Authority: "web.mesh"},
			Response: &datav3.HTTPResponseProperties{ResponseCode: wrapperspb.UInt32(200)},
		})
	}
	return &accesslogv3.StreamAccessLogsMessage{
		Identifier: &accesslogv3.StreamAccessLogsMessage_Identifier{Node: &core.Node{Id: node}, LogName: "als"},
		LogEntries: &accesslogv3.StreamAccessLogsMessage_HttpLogs{HttpLogs: &accesslogv3.StreamAccessLogsMessage_HTTPAccessLogEntries{LogEntry: entries}},
	}
}

func metrics(node string) *metricsv3.StreamMetricsMessage {
	return &metricsv3.StreamMetricsMessage{
		Identifier:   &metricsv3.StreamMetricsMessage_Identifier{Node: &core.Node{Id: node}},
		EnvoyMetrics: []*dto.MetricFamily{{Name: proto.String("envoy_cluster_upstream_rq_total"), Type: dto.MetricType_COUNTER.Enum()}},
	}
}

// TestSinksFileUnderBoundNode: what a proxy sends to the access-log and
// metrics services is filed under its connection's node, whatever node
// its messages name.
func TestSinksFileUnderBoundNode(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	c := f.nodeConn("web")

	logs := f.open(c, alsDesc, "StreamAccessLogs", sinks{s: f.s})
	logs.send(accessLogs("db", "/a", "/b"))
	logs.send(accessLogs("", "/c"))
	logs.send(accessLogs("web", strings.Repeat("x", 2000)))
	logs.closeSend()
	if err := logs.wait(); err != nil {
		t.Fatalf("access-log stream: %v", err)
	}
	if _, ok := logs.next().(*accesslogv3.StreamAccessLogsResponse); !ok {
		t.Fatal("no response after the client closed")
	}
	got := logsOf(f.tel, "web")
	if len(got) != 4 || got[0] != "/a" || got[2] != "/c" {
		t.Fatalf("web's log: %q", got)
	}
	if len(got[3]) > 512+len("...") {
		t.Errorf("a %d-byte path was kept whole", len(got[3]))
	}
	if other := logsOf(f.tel, "db"); len(other) != 0 {
		t.Fatalf("filed under the node the message named: %q", other)
	}

	m := f.open(c, metricsDesc, "StreamMetrics", sinks{s: f.s})
	m.send(metrics("db"))
	m.closeSend()
	if err := m.wait(); err != nil {
		t.Fatalf("metrics stream: %v", err)
	}
	if got := statsNodes(f.tel); len(got) != 1 || got[0] != "web" {
		t.Fatalf("stats filed under %q, want [web]", got)
	}
}

// TestSinksNeedBoundNode: the sinks refuse a stream without an
// authenticated node (no certificate, a revoked node, or a handler
// somehow reached unbound) and store nothing.
func TestSinksNeedBoundNode(t *testing.T) {
	f := newFixture(t)
	meshOfTwo(f)
	for _, sink := range []struct {
		desc   *grpc.ServiceDesc
		method string
		msg    proto.Message
	}{
		{alsDesc, "StreamAccessLogs", accessLogs("web", "/a")},
		{metricsDesc, "StreamMetrics", metrics("web")},
	} {
		t.Run(sink.method, func(t *testing.T) {
			noCert := f.openCtx(tlsPeer(t.Context()), sink.desc, sink.method, sinks{s: f.s})
			revoked := f.open(f.nodeConn("gone"), sink.desc, sink.method, sinks{s: f.s})
			for _, tt := range []struct {
				name string
				cl   *call
				code codes.Code
			}{{"no certificate", noCert, codes.Unauthenticated}, {"revoked node", revoked, codes.PermissionDenied}} {
				select {
				case tt.cl.recv <- sink.msg:
				default:
				}
				if err := tt.cl.wait(); status.Code(err) != tt.code {
					t.Errorf("%s: %v, want %v", tt.name, err, tt.code)
				}
			}
			// The handler itself, on a stream that bypassed the interceptor.
			st := &fakeStream{ctx: tlsPeer(t.Context(), f.nodeCert("web")), recv: make(chan proto.Message, 1), sent: make(chan proto.Message, 1)}
			st.recv <- sink.msg
			close(st.recv)
			var err error
			if sink.method == "StreamAccessLogs" {
				err = sinks{s: f.s}.StreamAccessLogs(&grpc.GenericServerStream[accesslogv3.StreamAccessLogsMessage, accesslogv3.StreamAccessLogsResponse]{ServerStream: st})
			} else {
				err = sinks{s: f.s}.StreamMetrics(&grpc.GenericServerStream[metricsv3.StreamMetricsMessage, metricsv3.StreamMetricsResponse]{ServerStream: st})
			}
			if status.Code(err) != codes.Unauthenticated {
				t.Errorf("unbound handler: %v, want Unauthenticated", err)
			}
			if l, s := logsOf(f.tel, "web"), statsNodes(f.tel); len(l) != 0 || len(s) != 0 {
				t.Fatalf("stored %q and stats of %q", l, s)
			}
		})
	}
}

// TestSinksDropWhatARemovedNodeSent: a message that arrives as its node is
// removed is not filed: nothing of a removed node stays in the access
// logs or the metrics.
func TestSinksDropWhatARemovedNodeSent(t *testing.T) {
	for _, sink := range []struct {
		desc   *grpc.ServiceDesc
		method string
		msg    proto.Message
	}{
		{alsDesc, "StreamAccessLogs", accessLogs("web", "/late")},
		{metricsDesc, "StreamMetrics", metrics("web")},
	} {
		t.Run(sink.method, func(t *testing.T) {
			f := newFixture(t)
			meshOfTwo(f)
			cl := f.open(f.nodeConn("web"), sink.desc, sink.method, sinks{s: f.s})
			removed := make(chan error, 1)
			// The node is removed between the message's arrival and its
			// filing.
			cl.received = func() {
				f.s.RemoveNode("web")
				removed <- nil
			}
			cl.send(sink.msg)
			if err := cl.wait(); status.Code(err) != codes.PermissionDenied {
				t.Fatalf("stream ended with %v, want PermissionDenied", err)
			}
			if err := <-removed; err != nil {
				t.Fatal(err)
			}
			if l, s := logsOf(f.tel, "web"), statsNodes(f.tel); len(l) != 0 || len(s) != 0 {
				t.Fatalf("the removed node's logs %q and stats of %q were kept", l, s)
			}
		})
	}
}
