package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"
)

func counterFamily(name string, v float64, labels ...string) *dto.MetricFamily {
	return statFamily(name, dto.MetricType_COUNTER, v, labels...)
}

func statFamily(name string, typ dto.MetricType, v float64, labels ...string) *dto.MetricFamily {
	m := &dto.Metric{}
	for i := 0; i+1 < len(labels); i += 2 {
		m.Label = append(m.Label, &dto.LabelPair{Name: proto.String(labels[i]), Value: proto.String(labels[i+1])})
	}
	if typ == dto.MetricType_GAUGE {
		m.Gauge = &dto.Gauge{Value: proto.Float64(v)}
	} else {
		m.Counter = &dto.Counter{Value: proto.Float64(v)}
	}
	return &dto.MetricFamily{Name: proto.String(name), Type: typ.Enum(), Metric: []*dto.Metric{m}}
}

// TestStatsOfOneNodeCannotHideAnothers: nodes send stats through the
// metrics service; one sends a gauge under a name others send as a
// counter, or other label names. Only the odd samples are left out (and
// counted for their node); every other series of every node stays.
func TestStatsOfOneNodeCannotHideAnothers(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	send := func(node string, fams ...*dto.MetricFamily) {
		t.Helper()
		ms, err := metricsv3.NewMetricsServiceClient(m.dial(m.joined(node, "web"))).StreamMetrics(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ms.Send(&metricsv3.StreamMetricsMessage{EnvoyMetrics: fams}); err != nil {
			t.Fatal(err)
		}
		// The server answers the close once it has filed every message.
		if _, err := ms.CloseAndRecv(); err != nil {
			t.Fatal(err)
		}
	}
	// "aaa" sorts first: being first by name must not make its shape win
	// against two nodes.
	send("aaa",
		statFamily("cluster_upstream_rq_total", dto.MetricType_GAUGE, 7, "envoy_cluster_name", "backend"),
		counterFamily("aaa_own", 1))
	send("nodeb",
		counterFamily("cluster_upstream_rq_total", 42, "envoy_cluster_name", "backend"),
		counterFamily("nodeb_own", 2))
	send("nodec",
		counterFamily("cluster_upstream_rq_total", 43, "envoy_cluster_name", "backend"),
		counterFamily("membership_total", 5, "other_label", "x"),
		counterFamily("nodec_own", 3))
	send("noded",
		counterFamily("membership_total", 6, "envoy_cluster_name", "backend"))

	want := []string{
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="backend",node="nodeb"} 42`,
		`envoy_cluster_upstream_rq_total{envoy_cluster_name="backend",node="nodec"} 43`,
		`envoy_aaa_own{node="aaa"} 1`,
		`envoy_nodeb_own{node="nodeb"} 2`,
		`envoy_nodec_own{node="nodec"} 3`,
		// A tie (one node each) goes to the first node by name.
		`envoy_membership_total{node="nodec",other_label="x"} 5`,
		`meshca_proxy_samples_dropped{node="aaa"} 1`,
		`meshca_proxy_samples_dropped{node="nodeb"} 0`,
		`meshca_proxy_samples_dropped{node="noded"} 1`,
	}
	text := scrape(t, m)
	for _, w := range want {
		if !strings.Contains(text, w) {
			t.Errorf("missing %s", w)
		}
	}
	if t.Failed() {
		t.Fatalf("scrape:\n%s", grepLines(text, "envoy_", "meshca_proxy"))
	}
	if strings.Contains(text, `node="aaa"} 7`) || strings.Contains(text, `envoy_membership_total{envoy_cluster_name`) {
		t.Fatalf("a conflicting sample was exposed:\n%s", grepLines(text, "envoy_"))
	}
	t.Logf("4 nodes, 2 conflicting samples: both left out and counted, all %d other series exposed", 6)
}

func grepLines(text string, subs ...string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		for _, s := range subs {
			if strings.Contains(l, s) && !strings.HasPrefix(l, "#") {
				out = append(out, l)
				break
			}
		}
	}
	return strings.Join(out, "\n")
}
