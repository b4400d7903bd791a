package app_test

import (
	"context"
	"crypto/tls"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/api"
)

// envoy is a raw ADS stream that behaves like Envoy: it asks for every
// listener and cluster, then by name for the routes, endpoints and secrets
// those reference, and ACKs every response.
type envoy struct {
	t         *testing.T
	s         discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	listeners map[string]*listenerv3.Listener
	clusters  map[string]*clusterv3.Cluster
	routes    map[string]*routev3.RouteConfiguration
	endpoints map[string]bool
	secrets   map[string]bool
	asked     map[string][]string
}

func connectEnvoy(t *testing.T, m *mesh, node string, cert *tls.Certificate) *envoy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e := &envoy{t: t, s: s, listeners: map[string]*listenerv3.Listener{}, clusters: map[string]*clusterv3.Cluster{},
		routes: map[string]*routev3.RouteConfiguration{}, endpoints: map[string]bool{}, secrets: map[string]bool{}, asked: map[string][]string{}}
	// CDS first, then LDS, as Envoy does; the node on the first message only.
	e.send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.ClusterType})
	e.send(&discovery.DiscoveryRequest{TypeUrl: resource.ListenerType})
	return e
}

func (e *envoy) send(r *discovery.DiscoveryRequest) {
	e.t.Helper()
	if err := e.s.Send(r); err != nil {
		e.t.Fatal(err)
	}
}

// settle reads responses until every referenced resource has arrived and
// nothing more is expected.
func (e *envoy) settle() {
	e.t.Helper()
	for i := 0; i < 20; i++ {
		if e.complete() {
			return
		}
		e.apply(recv(e.t, e.s))
		e.subscribe()
	}
	e.t.Fatalf("configuration never completed: routes %v endpoints %v secrets %v", names(e.routes), names(e.endpoints), names(e.secrets))
}

// wants returns what the listeners and clusters reference.
func (e *envoy) wants() map[string][]string {
	w := map[string][]string{}
	for _, l := range e.listeners {
		for _, fc := range l.GetFilterChains() {
			w[resource.SecretType] = append(w[resource.SecretType], downstreamSecrets(e.t, fc.GetTransportSocket())...)
			for _, f := range fc.GetFilters() {
				h := unpack(e.t, f.GetTypedConfig(), &hcmv3.HttpConnectionManager{})
				if n := h.GetRds().GetRouteConfigName(); n != "" {
					w[resource.RouteType] = append(w[resource.RouteType], n)
				}
			}
		}
	}
	for _, c := range e.clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			w[resource.EndpointType] = append(w[resource.EndpointType], c.GetName())
		}
		if ts := c.GetTransportSocket(); ts != nil {
			u := unpack(e.t, ts.GetTypedConfig(), &tlsv3.UpstreamTlsContext{})
			w[resource.SecretType] = append(w[resource.SecretType], tlsSecrets(u.GetCommonTlsContext())...)
		}
	}
	for k, v := range w {
		sort.Strings(v)
		w[k] = slices.Compact(v)
	}
	return w
}

func downstreamSecrets(t *testing.T, ts *core.TransportSocket) []string {
	if ts == nil {
		return nil
	}
	return tlsSecrets(unpack(t, ts.GetTypedConfig(), &tlsv3.DownstreamTlsContext{}).GetCommonTlsContext())
}

func tlsSecrets(c *tlsv3.CommonTlsContext) []string {
	var out []string
	for _, s := range c.GetTlsCertificateSdsSecretConfigs() {
		out = append(out, s.GetName())
	}
	if n := c.GetValidationContextSdsSecretConfig().GetName(); n != "" {
		out = append(out, n)
	}
	if n := c.GetCombinedValidationContext().GetValidationContextSdsSecretConfig().GetName(); n != "" {
		out = append(out, n)
	}
	return out
}

// subscribe asks for what the listeners and clusters reference.
func (e *envoy) subscribe() {
	for typ, names := range e.wants() {
		if !slices.Equal(names, e.asked[typ]) {
			e.asked[typ] = names
			e.send(&discovery.DiscoveryRequest{TypeUrl: typ, ResourceNames: names})
		}
	}
}

func (e *envoy) complete() bool {
	if len(e.listeners) == 0 || len(e.clusters) == 0 {
		return false
	}
	w := e.wants()
	for _, n := range w[resource.RouteType] {
		if e.routes[n] == nil {
			return false
		}
	}
	for _, n := range w[resource.EndpointType] {
		if !e.endpoints[n] {
			return false
		}
	}
	for _, n := range w[resource.SecretType] {
		if !e.secrets[n] {
			return false
		}
	}
	return true
}

func unpackName(t *testing.T, a *anypb.Any, typ string) string {
	t.Helper()
	m, err := a.UnmarshalNew()
	if err != nil {
		t.Fatal(err)
	}
	return m.(interface{ GetClusterName() string }).GetClusterName()
}

func unpack[T proto.Message](t *testing.T, a *anypb.Any, msg T) T {
	t.Helper()
	if err := a.UnmarshalTo(msg); err != nil {
		t.Fatal(err)
	}
	return msg
}

func readExample(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile("../../testdata/mesh/examples/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestEnvoyFrontProxyAndSidecar(t *testing.T) {
	m := startMesh(t, nil)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "front", DNSNames: []string{"echo.example.com"}}, nil, http.StatusCreated)
	for _, id := range []string{"echo", "billing", "ops"} {
		m.addIdentity(id)
	}
	edgeTok := m.addNode("edge-1", "front-proxy", "front")
	edgeCert, err := m.join("edge-1", edgeTok.Token)
	if err != nil {
		t.Fatal(err)
	}
	sideCert := m.joined("sidecar-echo", "echo")
	doc := readExample(t, "https-front-proxy.yaml")
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: doc}, nil, http.StatusCreated)

	edge := connectEnvoy(t, m, "edge-1", edgeCert)
	edge.settle()
	if got := names(edge.listeners); !slices.Equal(got, []string{"http_8080", "https_8443"}) {
		t.Fatalf("front proxy listeners %v", got)
	}
	// 8443 terminates TLS with the front identity and requires client certificates.
	tsock := edge.listeners["https_8443"].GetFilterChains()[0].GetTransportSocket()
	dtc := unpack(t, tsock.GetTypedConfig(), &tlsv3.DownstreamTlsContext{})
	if !dtc.GetRequireClientCertificate().GetValue() {
		t.Fatal("8443 does not require client certificates although the file says required")
	}
	if got := tlsSecrets(dtc.GetCommonTlsContext()); !slices.Contains(got, secretName("front")) || !slices.Contains(got, secretName("")) {
		t.Fatalf("8443 secrets %v", got)
	}
	if !edge.secrets[secretName("front")] || edge.secrets[secretName("echo")] {
		t.Fatalf("front proxy secrets %v: it must get front's and never echo's", names(edge.secrets))
	}
	// 8080 redirects to https, keeping port 8443.
	h := unpack(t, edge.listeners["http_8080"].GetFilterChains()[0].GetFilters()[0].GetTypedConfig(), &hcmv3.HttpConnectionManager{})
	redirect := h.GetRouteConfig().GetVirtualHosts()[0].GetRoutes()[0].GetRedirect()
	if !redirect.GetHttpsRedirect() || redirect.GetPortRedirect() != 8443 {
		t.Fatalf("8080 route is not a redirect to https on 8443: %v", redirect)
	}

	side := connectEnvoy(t, m, "sidecar-echo", sideCert)
	side.settle()
	if got := names(side.listeners); !slices.Contains(got, "outbound_billing_9001") || !slices.Contains(got, "inbound_15443") {
		t.Fatalf("sidecar listeners %v", got)
	}
	if side.clusters["billing"] == nil {
		t.Fatal("sidecar has no billing cluster")
	}

	// Remove billing from the mesh: its listener and cluster disappear from
	// the sidecar's next full-state responses.
	trimmed := strings.Replace(doc, "      - {service: billing, port: 9001}\n", "", 1)
	trimmed = strings.Replace(trimmed, `  - service: billing
    inbound_port: 15444
    app_port: 9090
    allowed_spiffe_ids:
      - exact: spiffe://mesh.local/echo
`, "", 1)
	trimmed = strings.Replace(trimmed, `  - name: billing
    identity: billing
    endpoints:
      - address: 127.0.0.1          # billing's sidecar (inbound_port 15444)
        port: 15444
`, "", 1)
	var plan api.MeshPlan
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: trimmed}, &plan, http.StatusCreated)
	if len(plan.Changes["sidecar-echo"]) == 0 {
		t.Fatalf("plan %+v shows no change for the sidecar", plan)
	}
	for i := 0; i < 10 && (side.listeners["outbound_billing_9001"] != nil || side.clusters["billing"] != nil); i++ {
		side.apply(recv(t, side.s))
	}
	if side.listeners["outbound_billing_9001"] != nil || side.clusters["billing"] != nil {
		t.Fatalf("billing still configured: listeners %v clusters %v", names(side.listeners), names(side.clusters))
	}
	var n api.Node
	m.admin("GET", api.PathNodes+"/edge-1", nil, &n, http.StatusOK)
	if n.Connection.NACKs != 0 || len(n.Connection.Acked) < 4 {
		t.Fatalf("edge-1 connection %+v", n.Connection)
	}
}

// apply takes one response into the envoy's state and ACKs it. Listeners
// and clusters are full state; the rest accumulate.
func (e *envoy) apply(r *discovery.DiscoveryResponse) {
	e.t.Helper()
	switch r.GetTypeUrl() {
	case resource.ListenerType:
		e.listeners = map[string]*listenerv3.Listener{}
		for _, a := range r.GetResources() {
			l := unpack(e.t, a, &listenerv3.Listener{})
			e.listeners[l.GetName()] = l
		}
	case resource.ClusterType:
		e.clusters = map[string]*clusterv3.Cluster{}
		for _, a := range r.GetResources() {
			c := unpack(e.t, a, &clusterv3.Cluster{})
			e.clusters[c.GetName()] = c
		}
	case resource.RouteType:
		for _, a := range r.GetResources() {
			rc := unpack(e.t, a, &routev3.RouteConfiguration{})
			e.routes[rc.GetName()] = rc
		}
	case resource.EndpointType:
		for _, a := range r.GetResources() {
			e.endpoints[unpackName(e.t, a, resource.EndpointType)] = true
		}
	case resource.SecretType:
		for _, a := range r.GetResources() {
			e.secrets[unpack(e.t, a, &tlsv3.Secret{}).GetName()] = true
		}
	}
	e.send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: e.asked[r.GetTypeUrl()]})
}
