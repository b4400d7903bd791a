package metrics_test

import (
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/telemetry"
)

// The four node metrics the README lists are exported from the start,
// before any node connects, so alerts can be written against them.
func TestNodeMetricsExportedFromStart(t *testing.T) {
	m := metrics.New(noState{}, time.Now, telemetry.New())
	_, text := scrape(t, m)
	for _, want := range []string{
		`meshca_nodes_connected{kind="sidecar"} 0`,
		`meshca_nodes_connected{kind="front-proxy"} 0`,
		`meshca_nodes_connected{kind="grpc"} 0`,
		`meshca_xds_push_duration_seconds_count{type="Listener"} 0`,
		`meshca_xds_push_duration_seconds_count{type="Secret"} 0`,
		`meshca_xds_nacks_total{type="Cluster"} 0`,
		`meshca_xds_last_nack_info{message="",type="RouteConfiguration"} 0`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("scrape lacks %s", want)
		}
	}
	// A NACK replaces the empty placeholder of its type.
	m.ObserveNACK("type.googleapis.com/envoy.config.listener.v3.Listener", "bad port")
	_, text = scrape(t, m)
	if !strings.Contains(text, `meshca_xds_last_nack_info{message="bad port",type="Listener"} 1`) ||
		strings.Contains(text, `meshca_xds_last_nack_info{message="",type="Listener"}`) ||
		!strings.Contains(text, `meshca_xds_nacks_total{type="Listener"} 1`) {
		t.Fatalf("after a NACK:\n%s", grep(text, "nack"))
	}
}

func grep(text, sub string) string {
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
