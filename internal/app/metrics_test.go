package app_test

import (
	"context"
	"net/http"
	"regexp"
	"strconv"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// scrape reads /metrics and returns the value of the first sample whose
// line matches the name and labels given as a regexp prefix.
func scrape(t *testing.T, m *mesh) string {
	t.Helper()
	resp, err := m.http.Get("http://" + m.app.Admin + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("/metrics: %s", resp.Status)
	}
	return string(readBody(t, resp))
}

func sample(t *testing.T, text, series string) (float64, bool) {
	t.Helper()
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	mm := re.FindStringSubmatch(text)
	if mm == nil {
		return 0, false
	}
	v, err := strconv.ParseFloat(mm[1], 64)
	if err != nil {
		t.Fatalf("%s: %v", series, err)
	}
	return v, true
}

func TestMetricsFollowAScenario(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	before := scrape(t, m)
	if _, ok := sample(t, before, `meshca_certificates_issued_total{kind="identity"}`); ok {
		t.Fatal("identity issuance counted before any")
	}
	m.addIdentity("echo")
	m.addIdentity("web")
	m.admin("POST", api.PathReissue+"/echo", struct{}{}, nil, http.StatusOK)
	cert := m.joined("n1", "echo")
	m.admin("POST", api.PathRevoke+"/web", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)

	// A proxy that ACKs, and one refused request.
	p := subscribe(t, m, "n1", cert, secretName(""), secretName("echo"))
	p.next()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("web")}})
	s.Recv()

	want := map[string]float64{
		`meshca_certificates_issued_total{kind="identity"}`:                3, // two adds, one reissue
		`meshca_certificates_issued_total{kind="node"}`:                    1,
		`meshca_certificates_renewed_total{by="operator"}`:                 1,
		`meshca_revocations_total`:                                         1,
		`meshca_authorization_denials_total{where="xds.request"}`:          1,
		`meshca_audit_events_total{action="identity.add",outcome="ok"}`:    2,
		`meshca_nodes_connected{kind="sidecar"}`:                           1,
		`meshca_xds_push_duration_seconds_count{type="Secret"}`:            1,
		`meshca_audit_events_total{action="identity.revoke",outcome="ok"}`: 1,
		`meshca_xds_events_total{event="joins"}`:                           1,
		`meshca_xds_events_total{event="denied"}`:                          1,
	}
	// Pushes, ACKs and the refused request are counted on the server's
	// stream goroutines, which tell no one: poll the scrape.
	var (
		text    string
		missing []string
	)
	if !pollUntil(5*time.Second, 20*time.Millisecond, func() bool {
		text, missing = scrape(t, m), nil
		for series, v := range want {
			if got, ok := sample(t, text, series); !ok || got < v {
				missing = append(missing, series)
			}
		}
		return len(missing) == 0
	}) {
		t.Fatalf("metrics did not move: %v\n%s", missing, text)
	}
	if v, ok := sample(t, text, `meshca_certificate_expiry_seconds{identity="echo"}`); !ok || v <= 0 || v > 3600 {
		t.Fatalf("echo expiry gauge %v %v", v, ok)
	}
	if _, ok := sample(t, text, `meshca_certificate_expiry_seconds{identity="web"}`); ok {
		t.Fatal("a revoked identity still has an expiry gauge")
	}
	if v, ok := sample(t, text, "meshca_crl_age_seconds"); !ok || v < 0 {
		t.Fatalf("CRL age %v %v", v, ok)
	}
	if v, ok := sample(t, text, "meshca_store_commit_duration_seconds_count"); !ok || v < 5 {
		t.Fatalf("store commits observed: %v", v)
	}

	// Readiness follows the CA: past the root's NotAfter (and so the
	// issuer's) nothing can issue. Past the issuer's alone, the rotation
	// loop may replace it before the check, which would race.
	get := func(path string) int {
		resp, err := m.http.Get("http://" + m.app.Admin + path)
		if err != nil {
			t.Fatal(err)
		}
		readBody(t, resp)
		return resp.StatusCode
	}
	if get("/healthz") != 200 || get("/readyz") != 200 {
		t.Fatal("not healthy and ready")
	}
	var c api.CA
	m.admin("GET", api.PathCA, nil, &c, http.StatusOK)
	clk.Set(c.Roots[0].NotAfter.Add(time.Second))
	if code := get("/readyz"); code != http.StatusServiceUnavailable {
		t.Fatalf("readyz = %d with an expired root and issuer", code)
	}
	if get("/healthz") != 200 {
		t.Fatal("healthz must stay up: the process is")
	}
}
