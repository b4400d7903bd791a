package mesh_test

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	grpclogv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/grpc/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/validate"
	"github.com/meshca/meshca/mesh"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/mesh/golden")

var td = spiffeid.RequireTrustDomainFromString("mesh.local")

const examplesDir = "../testdata/mesh/examples"

func readExample(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(examplesDir, name+".yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func parse(t testing.TB, data []byte) *mesh.Mesh {
	t.Helper()
	m, err := mesh.Parse(data, td)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return m
}

func build(t testing.TB, m *mesh.Mesh, n mesh.Node) mesh.Resources {
	t.Helper()
	res, err := mesh.Build(m, n, td)
	if err != nil {
		t.Fatalf("Build(%s): %v", n.Name, err)
	}
	return res
}

var (
	frontNode = mesh.Node{Name: "edge-1", Kind: mesh.KindFrontProxy, Identities: []string{"front"}}
	grpcNode  = mesh.Node{Name: "grpc-client-1", Kind: mesh.KindGRPC}
)

func sidecarNode(service string) mesh.Node {
	return mesh.Node{Name: "sidecar-" + service, Kind: mesh.KindSidecar, Identities: []string{service}}
}

// goldenCases lists every example with the nodes it applies to.
var goldenCases = []struct {
	example string
	nodes   []mesh.Node
}{
	{"http-front-proxy", []mesh.Node{frontNode}},
	{"incremental-deployment", []mesh.Node{frontNode, grpcNode}},
	{"https-front-proxy", []mesh.Node{frontNode, sidecarNode("echo"), sidecarNode("billing"), grpcNode}},
	{"grpc-mtls", []mesh.Node{grpcNode, grpcAgentNode("greeter-1", "greeter"), grpcAgentNode("web-1", "web")}},
}

func grpcAgentNode(name string, ids ...string) mesh.Node {
	return mesh.Node{Name: name, Kind: mesh.KindGRPC, Identities: ids, Agent: true}
}

func TestGolden(t *testing.T) {
	for _, tc := range goldenCases {
		m := parse(t, readExample(t, tc.example))
		for _, n := range tc.nodes {
			t.Run(tc.example+"/"+n.Name, func(t *testing.T) {
				res := build(t, m, n)
				for typ, rs := range res.ByType {
					if len(rs) == 0 && typ != resource.RouteType && typ != resource.EndpointType {
						t.Errorf("no %s resources", typ)
					}
					for _, r := range rs {
						if err := validate.Message(r); err != nil {
							t.Errorf("%s %q: %v", typ, cachev3.GetResourceName(r), err)
						}
					}
				}
				got, err := res.YAML()
				if err != nil {
					t.Fatal(err)
				}
				again, _ := build(t, m, n).YAML()
				if !bytes.Equal(got, again) {
					t.Fatal("two builds render differently")
				}
				path := filepath.Join("..", "testdata", "mesh", "golden", tc.example, n.Name+".yaml")
				if *update {
					if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
						t.Fatal(err)
					}
					if err := os.WriteFile(path, got, 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, err := os.ReadFile(path)
				if err != nil {
					t.Fatalf("%v (run go test ./mesh -update)", err)
				}
				if !bytes.Equal(got, want) {
					t.Errorf("%s differs from the build output (run go test ./mesh -update and review the diff)", path)
				}
			})
		}
	}
}

func TestExamplesRoundTrip(t *testing.T) {
	for _, tc := range goldenCases {
		t.Run(tc.example, func(t *testing.T) {
			m := parse(t, readExample(t, tc.example))
			out, err := m.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			m2 := parse(t, out)
			if !reflect.DeepEqual(m, m2) {
				t.Fatalf("Parse(Marshal(m)) != m\n%s", out)
			}
			out2, _ := m2.Marshal()
			if !bytes.Equal(out, out2) {
				t.Fatalf("Marshal is not canonical:\n%s\n---\n%s", out, out2)
			}
		})
	}
}

// find returns the resource of type T named name.
func find[T types.Resource](t *testing.T, res mesh.Resources, typ, name string) T {
	t.Helper()
	for _, r := range res.ByType[typ] {
		if cachev3.GetResourceName(r) == name {
			return r.(T)
		}
	}
	var names []string
	for _, r := range res.ByType[typ] {
		names = append(names, cachev3.GetResourceName(r))
	}
	t.Fatalf("no %s named %q (have %v)", typ, name, names)
	panic("unreachable")
}

func names(res mesh.Resources, typ string) []string {
	var out []string
	for _, r := range res.ByType[typ] {
		out = append(out, cachev3.GetResourceName(r))
	}
	return out
}

func listenerHCM(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	h := new(hcmv3.HttpConnectionManager)
	var err error
	if l.GetApiListener() != nil {
		err = l.GetApiListener().GetApiListener().UnmarshalTo(h)
	} else {
		err = l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h)
	}
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func downstreamTLS(t *testing.T, l *listenerv3.Listener) *tlsv3.DownstreamTlsContext {
	t.Helper()
	d := new(tlsv3.DownstreamTlsContext)
	if err := l.GetFilterChains()[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(d); err != nil {
		t.Fatal(err)
	}
	return d
}

func sanStrings(ms []*tlsv3.SubjectAltNameMatcher) []string {
	var out []string
	for _, m := range ms {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			out = append(out, "not-uri")
		}
		if e := m.GetMatcher().GetExact(); e != "" {
			out = append(out, "exact:"+e)
		} else {
			out = append(out, "prefix:"+m.GetMatcher().GetPrefix())
		}
	}
	return out
}

func TestHTTPRedirectKeepsPort(t *testing.T) {
	for _, code := range []struct {
		file string
		want routev3.RedirectAction_RedirectResponseCode
	}{
		{"permanent_redirect", routev3.RedirectAction_PERMANENT_REDIRECT},
		{"moved_permanently", routev3.RedirectAction_MOVED_PERMANENTLY},
	} {
		t.Run(code.file, func(t *testing.T) {
			data := strings.Replace(string(readExample(t, "https-front-proxy")), "redirect_to_https: permanent_redirect", "redirect_to_https: "+code.file, 1)
			res := build(t, parse(t, []byte(data)), frontNode)
			l := find[*listenerv3.Listener](t, res, resource.ListenerType, "http_8080")
			if p := l.GetAddress().GetSocketAddress().GetPortValue(); p != 8080 {
				t.Errorf("port %d, want 8080", p)
			}
			rc := listenerHCM(t, l).GetRouteConfig()
			routes := rc.GetVirtualHosts()[0].GetRoutes()
			if len(routes) != 1 {
				t.Fatalf("%d routes, want 1", len(routes))
			}
			r := routes[0].GetRedirect()
			if !r.GetHttpsRedirect() || r.GetPortRedirect() != 8443 || r.GetResponseCode() != code.want {
				t.Errorf("redirect = %v, want https_redirect, port_redirect 8443, %v", r, code.want)
			}
		})
	}
}

func TestHTTPSListenerClientCerts(t *testing.T) {
	wantSANs := []string{"exact:spiffe://mesh.local/ops", "prefix:spiffe://mesh.local/partners/"}
	tests := []struct {
		name        string
		mode        string
		wantRequire bool
		wantSANs    []string // nil: no validation context
	}{
		{"required", "required", true, wantSANs},
		{"optional", "optional", false, wantSANs},
		{"none", "none", false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			data := string(readExample(t, "https-front-proxy"))
			data = strings.Replace(data, "client_certs: required", "client_certs: "+tt.mode, 1)
			if tt.mode == "none" {
				data = strings.Replace(data, `    allowed_spiffe_ids:
      - exact: spiffe://mesh.local/ops
      - prefix: spiffe://mesh.local/partners/
    forward_client_cert: true
`, "", 1)
			}
			res := build(t, parse(t, []byte(data)), frontNode)
			l := find[*listenerv3.Listener](t, res, resource.ListenerType, "https_8443")
			d := downstreamTLS(t, l)
			if got := d.GetRequireClientCertificate().GetValue(); got != tt.wantRequire {
				t.Errorf("require_client_certificate = %v, want %v", got, tt.wantRequire)
			}
			common := d.GetCommonTlsContext()
			if got := common.GetTlsCertificateSdsSecretConfigs()[0].GetName(); got != "spiffe://mesh.local/front" {
				t.Errorf("certificate secret %q", got)
			}
			cv := common.GetCombinedValidationContext()
			got := sanStrings(cv.GetDefaultValidationContext().GetMatchTypedSubjectAltNames())
			if !slices.Equal(got, tt.wantSANs) {
				t.Errorf("SAN matchers %v, want %v", got, tt.wantSANs)
			}
			if tt.wantSANs != nil && cv.GetValidationContextSdsSecretConfig().GetName() != "spiffe://mesh.local" {
				t.Errorf("validation secret %q", cv.GetValidationContextSdsSecretConfig().GetName())
			}
			wantSecrets := []string{"spiffe://mesh.local", "spiffe://mesh.local/front"}
			if !slices.Equal(res.Secrets, wantSecrets) {
				t.Errorf("Secrets %v, want %v", res.Secrets, wantSecrets)
			}
		})
	}
}

func TestHTTPSListenerHSTSAndXFCC(t *testing.T) {
	res := build(t, parse(t, readExample(t, "https-front-proxy")), frontNode)
	l := find[*listenerv3.Listener](t, res, resource.ListenerType, "https_8443")
	h := listenerHCM(t, l)
	if h.GetForwardClientCertDetails() != hcmv3.HttpConnectionManager_SANITIZE_SET {
		t.Errorf("forward_client_cert_details = %v", h.GetForwardClientCertDetails())
	}
	cd := h.GetSetCurrentClientCertDetails()
	if !cd.GetSubject().GetValue() || !cd.GetUri() || !cd.GetCert() {
		t.Errorf("set_current_client_cert_details = %v, want subject, uri, cert", cd)
	}
	if h.GetRds().GetRouteConfigName() != "web" {
		t.Fatalf("8443 uses route config %q, want web", h.GetRds().GetRouteConfigName())
	}
	rc := find[*routev3.RouteConfiguration](t, res, resource.RouteType, "web")
	var hsts string
	for _, o := range rc.GetVirtualHosts()[0].GetResponseHeadersToAdd() {
		if o.GetHeader().GetKey() == "strict-transport-security" {
			hsts = o.GetHeader().GetValue()
		}
	}
	if hsts != "max-age=31536000; includeSubDomains" {
		t.Errorf("strict-transport-security = %q", hsts)
	}
	// The mTLS upstream (echo has a sidecar) is called with the front
	// identity and checks echo's SPIFFE ID; greeter (no sidecar) is plain.
	up := upstreamTLS(t, find[*clusterv3.Cluster](t, res, resource.ClusterType, "echo"))
	if up == nil || up.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName() != "spiffe://mesh.local/front" {
		t.Errorf("echo cluster TLS = %v", up)
	}
	if up := upstreamTLS(t, find[*clusterv3.Cluster](t, res, resource.ClusterType, "greeter")); up != nil {
		t.Errorf("greeter cluster has TLS: %v", up)
	}
}

func upstreamTLS(t *testing.T, c *clusterv3.Cluster) *tlsv3.UpstreamTlsContext {
	t.Helper()
	if c.GetTransportSocket() == nil {
		return nil
	}
	u := new(tlsv3.UpstreamTlsContext)
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(u); err != nil {
		t.Fatal(err)
	}
	return u
}

func TestWeightedSplit(t *testing.T) {
	m := parse(t, readExample(t, "incremental-deployment"))
	tests := []struct {
		node mesh.Node
		typ  string
		name string
	}{
		{frontNode, resource.RouteType, "echo"},
		{grpcNode, resource.RouteType, "echo"},
	}
	for _, tt := range tests {
		t.Run(tt.node.Kind, func(t *testing.T) {
			res := build(t, m, tt.node)
			rc := find[*routev3.RouteConfiguration](t, res, tt.typ, tt.name)
			vh := rc.GetVirtualHosts()[0]
			var got []string
			for _, w := range vh.GetRoutes()[1].GetRoute().GetWeightedClusters().GetClusters() {
				got = append(got, w.GetName()+"="+w.GetWeight().String())
			}
			want := []string{"echo-alpha=value:80", "echo-beta=value:20"}
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("weighted clusters %v, want %v", got, want)
			}
			hdr := vh.GetResponseHeadersToAdd()
			if len(hdr) != 1 || hdr[0].GetHeader().GetKey() != "x-upstream-host" || hdr[0].GetHeader().GetValue() != "%UPSTREAM_HOST%" {
				t.Errorf("response headers %v", hdr)
			}
			canary := vh.GetRoutes()[0]
			if canary.GetMatch().GetHeaders()[0].GetStringMatch().GetExact() != "true" || canary.GetRoute().GetCluster() != "echo-beta" {
				t.Errorf("canary route %v", canary)
			}
		})
	}
}

func TestGRPCNodeResources(t *testing.T) {
	// Move all traffic to beta: grpc nodes must then not get alpha at all.
	data := strings.NewReplacer("weight: 80", "weight: 0", "weight: 20", "weight: 100").Replace(string(readExample(t, "incremental-deployment")))
	res := build(t, parse(t, []byte(data)), grpcNode)
	l := find[*listenerv3.Listener](t, res, resource.ListenerType, "echo")
	if l.GetApiListener() == nil || len(l.GetFilterChains()) != 0 || l.GetAddress() != nil {
		t.Fatalf("listener is not an api_listener: %v", l)
	}
	h := listenerHCM(t, l)
	if h.GetRds().GetConfigSource().GetAds() == nil || h.GetRds().GetRouteConfigName() != "echo" {
		t.Errorf("HCM RDS = %v", h.GetRds())
	}
	filters := h.GetHttpFilters()
	if len(filters) == 0 || filters[len(filters)-1].GetName() != "envoy.filters.http.router" {
		t.Errorf("http filters %v do not end with the router", filters)
	}
	// The weight-0 cluster stays (make before break), out of the route.
	if got := names(res, resource.ClusterType); !slices.Equal(got, []string{"echo-alpha", "echo-beta"}) {
		t.Errorf("clusters %v, want both: a weight-0 target keeps its cluster", got)
	}
	for _, r := range res.ByType[resource.ClusterType] {
		c := r.(*clusterv3.Cluster)
		if c.GetTransportSocket() != nil {
			t.Errorf("cluster %s has a transport socket: grpc-go NACKs SDS", c.GetName())
		}
		if c.GetType() != clusterv3.Cluster_EDS || c.GetEdsClusterConfig().GetEdsConfig().GetAds() == nil || c.GetLbPolicy() != clusterv3.Cluster_ROUND_ROBIN {
			t.Errorf("cluster %s is not EDS over ADS with ROUND_ROBIN", c.GetName())
		}
	}
	for _, r := range res.ByType[resource.EndpointType] {
		cla := r.(*endpointv3.ClusterLoadAssignment)
		for _, l := range cla.GetEndpoints() {
			if l.GetLocality() == nil || l.GetLoadBalancingWeight().GetValue() == 0 {
				t.Errorf("%s: locality %v weight %v", cla.GetClusterName(), l.GetLocality(), l.GetLoadBalancingWeight())
			}
			for _, e := range l.GetLbEndpoints() {
				if e.GetLoadBalancingWeight().GetValue() < 1 {
					t.Errorf("%s: endpoint weight 0", cla.GetClusterName())
				}
			}
		}
	}
	rc := find[*routev3.RouteConfiguration](t, res, resource.RouteType, "echo")
	wc := rc.GetVirtualHosts()[0].GetRoutes()[1].GetRoute()
	if n := len(wc.GetWeightedClusters().GetClusters()); n != 1 {
		t.Errorf("%d weighted clusters, want 1", n)
	}
	if wc.GetRetryPolicy().GetRetryOn() != "unavailable" || wc.GetMaxStreamDuration().GetMaxStreamDuration().AsDuration().String() != "5s" {
		t.Errorf("grpc route action %v: want retry_on unavailable only and max_stream_duration 5s", wc)
	}
	if len(res.Secrets) != 0 {
		t.Errorf("grpc node references secrets %v", res.Secrets)
	}
}

func TestSidecar(t *testing.T) {
	m := parse(t, readExample(t, "https-front-proxy"))
	res := build(t, m, sidecarNode("echo"))
	wantListeners := []string{"inbound_15443", "outbound_billing_9001", "outbound_greeter_9002"}
	if got := names(res, resource.ListenerType); !slices.Equal(got, wantListeners) {
		t.Errorf("listeners %v, want %v", got, wantListeners)
	}
	in := downstreamTLS(t, find[*listenerv3.Listener](t, res, resource.ListenerType, "inbound_15443"))
	if !in.GetRequireClientCertificate().GetValue() {
		t.Error("inbound does not require client certificates")
	}
	if got := sanStrings(in.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()); !slices.Equal(got, []string{"exact:spiffe://mesh.local/front"}) {
		t.Errorf("inbound SANs %v", got)
	}
	local := find[*clusterv3.Cluster](t, res, resource.ClusterType, "local_echo")
	sa := local.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	if local.GetType() != clusterv3.Cluster_STATIC || sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 9080 {
		t.Errorf("local cluster %v", local)
	}
	up := upstreamTLS(t, find[*clusterv3.Cluster](t, res, resource.ClusterType, "billing"))
	if up == nil {
		t.Fatal("billing cluster has no TLS")
	}
	if got := up.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName(); got != "spiffe://mesh.local/echo" {
		t.Errorf("client certificate secret %q, want echo's", got)
	}
	cv := up.GetCommonTlsContext().GetCombinedValidationContext()
	if got := sanStrings(cv.GetDefaultValidationContext().GetMatchTypedSubjectAltNames()); !slices.Equal(got, []string{"exact:spiffe://mesh.local/billing"}) {
		t.Errorf("upstream SAN check %v, want billing's SPIFFE ID", got)
	}
	if cv.GetValidationContextSdsSecretConfig().GetName() != "spiffe://mesh.local" {
		t.Errorf("upstream validation secret %q", cv.GetValidationContextSdsSecretConfig().GetName())
	}
	if !slices.Equal(res.Secrets, []string{"spiffe://mesh.local", "spiffe://mesh.local/echo"}) {
		t.Errorf("Secrets %v", res.Secrets)
	}
	// A sidecar node holding no sidecar'd identity gets nothing, and never
	// another service's certificate.
	other := build(t, m, mesh.Node{Name: "x", Kind: mesh.KindSidecar, Identities: []string{"ops"}})
	for typ, rs := range other.ByType {
		if len(rs) != 0 {
			t.Errorf("unrelated sidecar got %s %v", typ, names(other, typ))
		}
	}
}

func TestMissingIdentity(t *testing.T) {
	m := parse(t, readExample(t, "https-front-proxy"))
	res, err := mesh.Build(m, mesh.Node{Name: "edge-2", Kind: mesh.KindFrontProxy, Identities: []string{"echo"}}, td)
	if !errors.Is(err, mesh.ErrMissingIdentity) {
		t.Fatalf("err = %v, want ErrMissingIdentity", err)
	}
	if got := names(res, resource.ListenerType); len(got) != 0 {
		t.Errorf("listeners %v despite the missing identity", got)
	}
	nodes := []mesh.Node{frontNode, {Name: "edge-2", Kind: mesh.KindFrontProxy}, sidecarNode("echo")}
	if err := mesh.Check(m, nodes, td); !errors.Is(err, mesh.ErrMissingIdentity) || !strings.Contains(err.Error(), "edge-2") {
		t.Errorf("Check = %v, want ErrMissingIdentity for edge-2", err)
	}
	if err := mesh.Check(m, nodes[:1], td); err != nil {
		t.Errorf("Check(front only) = %v", err)
	}
}

func TestBuildErrors(t *testing.T) {
	m := parse(t, readExample(t, "https-front-proxy"))
	if _, err := mesh.Build(m, mesh.Node{Name: "n", Kind: "envoy"}, td); !errors.Is(err, mesh.ErrUnknownKind) {
		t.Errorf("unknown kind: %v", err)
	}
	// Two sidecars on one node with the same inbound port.
	n := mesh.Node{Name: "both", Kind: mesh.KindSidecar, Identities: []string{"echo", "billing"}}
	samePort := parse(t, []byte(strings.Replace(string(readExample(t, "https-front-proxy")), "    inbound_port: 15444\n", "    inbound_port: 15443\n", 1)))
	if _, err := mesh.Build(samePort, n, td); !errors.Is(err, mesh.ErrConflict) {
		t.Errorf("two sidecars on port 15443: %v, want ErrConflict", err)
	}
	// A mesh built in code is validated too.
	bad := *m
	bad.Services = append(slices.Clone(m.Services), mesh.Service{Name: "echo"})
	if _, err := mesh.Build(&bad, frontNode, td); !errors.Is(err, mesh.ErrInvalid) {
		t.Errorf("duplicate service in code: %v", err)
	}
	// nil mesh: nothing, no error.
	res, err := mesh.Build(nil, frontNode, td)
	if err != nil || len(res.ByType[resource.ListenerType]) != 0 || len(res.ByType) != 4 {
		t.Errorf("nil mesh: %v %v", res, err)
	}
}

func TestRemoveServiceDiff(t *testing.T) {
	data := string(readExample(t, "https-front-proxy"))
	old := build(t, parse(t, []byte(data)), sidecarNode("echo"))
	// Drop billing: its service, its sidecar and echo's outbound to it.
	data = strings.Replace(data, `  - name: billing
    identity: billing
    endpoints:
      - address: 127.0.0.1          # billing's sidecar (inbound_port 15444)
        port: 15444
`, "", 1)
	data = strings.Replace(data, "      - {service: billing, port: 9001}\n", "", 1)
	data = data[:strings.Index(data, "  - service: billing")] + data[strings.Index(data, "grpc:"):]
	res := build(t, parse(t, []byte(data)), sidecarNode("echo"))
	if slices.Contains(names(res, resource.ClusterType), "billing") || slices.Contains(names(res, resource.ListenerType), "outbound_billing_9001") {
		t.Fatalf("billing still built: %v %v", names(res, resource.ClusterType), names(res, resource.ListenerType))
	}
	got := mesh.Diff(old, res)
	want := []mesh.Change{
		{Type: resource.ClusterType, Name: "billing", Op: "remove"},
		{Type: resource.EndpointType, Name: "billing", Op: "remove"},
		{Type: resource.ListenerType, Name: "outbound_billing_9001", Op: "remove"},
	}
	if !slices.Equal(got, want) {
		t.Errorf("Diff = %v, want %v", got, want)
	}
	if d := mesh.Diff(res, res); len(d) != 0 {
		t.Errorf("Diff of equal resources = %v", d)
	}
	back := mesh.Diff(res, old)
	if len(back) != 3 || back[0].Op != "add" {
		t.Errorf("reverse Diff = %v", back)
	}
	// A weight change is a "change" of the route config only.
	m := parse(t, readExample(t, "incremental-deployment"))
	a := build(t, m, frontNode)
	*m.Routes[0].Rules[1].Weighted[0].Weight = 50
	b := build(t, m, frontNode)
	if d := mesh.Diff(a, b); !slices.Equal(d, []mesh.Change{{Type: resource.RouteType, Name: "echo", Op: "change"}}) {
		t.Errorf("weight change Diff = %v", d)
	}
}

func TestHostNameEndpointsUseStrictDNS(t *testing.T) {
	data := strings.Replace(string(readExample(t, "http-front-proxy")), "address: 127.0.0.1", "address: echo.internal", 1)
	res := build(t, parse(t, []byte(data)), frontNode)
	c := find[*clusterv3.Cluster](t, res, resource.ClusterType, "echo")
	if c.GetType() != clusterv3.Cluster_STRICT_DNS || len(c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()) != 2 {
		t.Errorf("cluster %v, want STRICT_DNS with both endpoints inline", c)
	}
	if got := names(res, resource.EndpointType); len(got) != 0 {
		t.Errorf("load assignments %v for a STRICT_DNS cluster", got)
	}
}

func TestAccessLogGoesToMeshca(t *testing.T) {
	data := "access_log: true\n" + string(readExample(t, "https-front-proxy"))
	m := parse(t, []byte(data))
	res := build(t, m, frontNode)
	for _, name := range []string{"https_8443", "http_8080"} {
		h := listenerHCM(t, find[*listenerv3.Listener](t, res, resource.ListenerType, name))
		if len(h.GetAccessLog()) != 1 {
			t.Fatalf("%s: %d access logs", name, len(h.GetAccessLog()))
		}
		cfg := &grpclogv3.HttpGrpcAccessLogConfig{}
		if err := h.GetAccessLog()[0].GetTypedConfig().UnmarshalTo(cfg); err != nil {
			t.Fatal(err)
		}
		if got := cfg.GetCommonConfig().GetGrpcService().GetEnvoyGrpc().GetClusterName(); got != bootstrap.ClusterName {
			t.Fatalf("%s logs to cluster %q, want the bootstrap's %q", name, got, bootstrap.ClusterName)
		}
	}
	for _, r := range build(t, m, grpcNode).ByType[resource.ListenerType] {
		if len(listenerHCM(t, r.(*listenerv3.Listener)).GetAccessLog()) != 0 {
			t.Fatal("grpc node listener has an access log")
		}
	}
	if mesh.MeshcaCluster != bootstrap.ClusterName {
		t.Fatalf("mesh logs to %q but the bootstrap's cluster is %q", mesh.MeshcaCluster, bootstrap.ClusterName)
	}
	// Without the key, nothing is logged.
	plain := build(t, parse(t, readExample(t, "https-front-proxy")), frontNode)
	if len(listenerHCM(t, find[*listenerv3.Listener](t, plain, resource.ListenerType, "https_8443")).GetAccessLog()) != 0 {
		t.Fatal("access log without access_log: true")
	}
}

// BenchmarkBuild builds the front proxy of the incremental-deployment
// example: the per-node cost of every snapshot refresh.
func BenchmarkBuild(b *testing.B) {
	m := parse(b, readExample(b, "incremental-deployment"))
	n := mesh.Node{Name: "front", Kind: mesh.KindFrontProxy}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := mesh.Build(m, n, td); err != nil {
			b.Fatal(err)
		}
	}
}

// TestBuildSharesParsedMesh builds every node of one parsed mesh from many
// goroutines at once, as parallel snapshot refreshes do: under -race this
// fails if building writes to the shared Mesh, and each build must equal a
// build from a fresh parse.
func TestBuildSharesParsedMesh(t *testing.T) {
	for _, tt := range []struct {
		example string
		nodes   []mesh.Node
	}{
		{"incremental-deployment", []mesh.Node{frontNode, {Name: "front-2", Kind: mesh.KindFrontProxy}}},
		{"https-front-proxy", []mesh.Node{frontNode, sidecarNode("echo"), sidecarNode("billing"), grpcNode}},
	} {
		t.Run(tt.example, func(t *testing.T) { testBuildSharesParsedMesh(t, tt.example, tt.nodes) })
	}
}

func testBuildSharesParsedMesh(t *testing.T, example string, nodes []mesh.Node) {
	data := readExample(t, example)
	shared := parse(t, data)
	want := make([]mesh.Resources, len(nodes))
	for i, n := range nodes {
		want[i] = build(t, parse(t, data), n)
	}
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i, n := range nodes {
				got, err := mesh.Build(shared, n, td)
				if err != nil {
					t.Error(err)
					return
				}
				for typeURL, rs := range want[i].ByType {
					if len(got.ByType[typeURL]) != len(rs) {
						t.Errorf("%s: %d %s resources, want %d", n.Name, len(got.ByType[typeURL]), typeURL, len(rs))
						continue
					}
					for j := range rs {
						if !proto.Equal(got.ByType[typeURL][j], rs[j]) {
							t.Errorf("%s: %s resource %d differs from a fresh parse", n.Name, typeURL, j)
						}
					}
				}
			}
		}()
	}
	wg.Wait()
}
