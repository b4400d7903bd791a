package metrics_test

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/internal/metrics"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/telemetry"
)

type noState struct{}

func (noState) IdentityExpiries() []metrics.Expiry { return nil }
func (noState) CAExpiries() []metrics.Expiry       { return nil }
func (noState) CRLAge() (time.Duration, bool)      { return 0, false }
func (noState) ConnectedNodes() map[string]int     { return nil }
func (noState) XDSEvents() map[string]int64        { return map[string]int64{"invalid_configs": 2} }
func (noState) Connections() []metrics.Connections { return nil }

func scrape(t *testing.T, m *metrics.Metrics) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return rec.Code, string(b)
}

// A proxy's NACK text is untrusted: invalid UTF-8 or a multi-byte
// character cut at the limit must neither panic nor break the scrape.
func TestNACKMessagesAreSafeLabels(t *testing.T) {
	m := metrics.New(noState{}, time.Now, telemetry.New())
	m.ObserveNACK("type.googleapis.com/envoy.config.listener.v3.Listener", strings.Repeat("a", 199)+"é and more")
	m.ObserveNACK("type.googleapis.com/envoy.config.cluster.v3.Cluster", "bad \xff\xfe bytes")
	code, text := scrape(t, m)
	if code != 200 || !strings.Contains(text, `meshca_xds_nacks_total{type="Listener"} 1`) || !strings.Contains(text, `meshca_xds_nacks_total{type="Cluster"} 1`) {
		t.Fatalf("scrape %d:\n%s", code, text)
	}
}

// Successes are counted from audit records; refusals and failures as they
// happen (ObserveDenial), and never again from their aggregated records.
func TestCountersFromAuditRecords(t *testing.T) {
	m := metrics.New(noState{}, time.Now, telemetry.New())
	m.ObserveCommit([]store.Event{
		{Action: "cert.issue", Identity: "echo", Outcome: store.OutcomeOK},
		{Action: "identity.reissue", Actor: "rotation", Outcome: store.OutcomeOK},
		{Action: "cert.issue", Outcome: store.OutcomeFailed, Detail: "certificate failed lint"},
		{Action: "xds.request", Outcome: store.OutcomeDenied, Detail: "41 more refusals between ..."},
	}, time.Millisecond)
	m.ObserveDenial("cert.issue", store.OutcomeFailed, "lint")
	for i := 0; i < 42; i++ {
		m.ObserveDenial("xds.request", store.OutcomeDenied, "not_allowed")
	}
	_, text := scrape(t, m)
	for _, want := range []string{
		`meshca_certificates_issued_total{kind="identity"} 2`,
		`meshca_certificates_renewed_total{by="rotation"} 1`,
		`meshca_lint_rejections_total 1`,
		`meshca_authorization_denials_total{where="xds.request"} 42`,
		`meshca_refusals_total{action="xds.request",outcome="denied",reason="not_allowed"} 42`,
		`meshca_audit_events_total{action="xds.request",outcome="denied"} 1`,
		`meshca_store_commit_duration_seconds_count 1`,
		`meshca_xds_events_total{event="invalid_configs"} 2`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("missing %s", want)
		}
	}
}

// Proxy stats are bounded per node and a collision with the node label
// drops only that family.
func TestProxyStatsAreBounded(t *testing.T) {
	tel := telemetry.New()
	var fams []*dto.MetricFamily
	f := &dto.MetricFamily{Name: proto.String("cluster.upstream_rq"), Type: dto.MetricType_COUNTER.Enum()}
	for i := 0; i < 8000; i++ {
		f.Metric = append(f.Metric, &dto.Metric{Label: []*dto.LabelPair{{Name: proto.String("id"), Value: proto.String(strings.Repeat("x", i%300) + string(rune('a'+i%26)) + strings.Repeat("y", i/26))}},
			Counter: &dto.Counter{Value: proto.Float64(1)}})
	}
	fams = append(fams, f, &dto.MetricFamily{Name: proto.String("clash"), Type: dto.MetricType_GAUGE.Enum(),
		Metric: []*dto.Metric{{Label: []*dto.LabelPair{{Name: proto.String("node"), Value: proto.String("x")}}, Gauge: &dto.Gauge{Value: proto.Float64(1)}}}})
	tel.SetStats("n1", time.Now(), fams)
	m := metrics.New(noState{}, time.Now, tel)
	code, text := scrape(t, m)
	if code != 200 {
		t.Fatalf("scrape %d", code)
	}
	if n := strings.Count(text, "envoy_cluster_upstream_rq{"); n == 0 || n > 5000 {
		t.Fatalf("%d proxy samples exposed, want 1..5000", n)
	}
	if strings.Contains(text, "envoy_clash") {
		t.Fatal("a family whose labels collide with node was exposed")
	}
	tel.Forget("n1")
	if _, text := scrape(t, m); strings.Contains(text, "envoy_") {
		t.Fatal("a forgotten node's stats are still exposed")
	}
}
