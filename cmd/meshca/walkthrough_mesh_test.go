package main_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"maps"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/internal/api"
	bootstrapfiles "github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/mesh"
)

// nodeView is what one node receives over ADS, fetched as Envoy does it:
// listeners and clusters by wildcard, then the routes, endpoints and
// secrets they name.
type nodeView struct {
	name      string
	listeners map[string]*listenerv3.Listener
	clusters  map[string]*clusterv3.Cluster
	routes    map[string]*routev3.RouteConfiguration
	endpoints map[string]*endpointv3.ClusterLoadAssignment
	secrets   map[string]*tlsv3.Secret
}

// fetchNode opens an ADS stream to xdsAddr as node name, with the node
// certificate that `meshca bootstrap` or `meshca agent` wrote to dir. The
// secrets of an agent node (agentSocket not "") are fetched from its
// agent's SDS socket, where its Envoy gets them, after checking that every
// TLS context meshca sent names the agent's cluster as their source.
func fetchNode(t *testing.T, xdsAddr, dir, name, agentSocket string) *nodeView {
	t.Helper()
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, bootstrapfiles.CertFile), filepath.Join(dir, bootstrapfiles.KeyFile))
	if err != nil {
		t.Fatalf("node %s: %v", name, err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(mustRead(t, filepath.Join(dir, bootstrapfiles.BundleFile))) {
		t.Fatalf("node %s: no certificate in its bundle", name)
	}
	tlsCfg := &tls.Config{
		Certificates: []tls.Certificate{pair},
		// meshca's xDS certificate is checked against the bundle and its
		// SPIFFE ID, not a host name, as the node's Envoy does.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			_, _, err := testkit.VerifyChain(raw, x509.VerifyOptions{Roots: roots})
			return err
		},
	}
	conn, err := grpc.NewClient(xdsAddr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatalf("node %s: ADS: %v", name, err)
	}
	v := &nodeView{name: name, listeners: map[string]*listenerv3.Listener{}, clusters: map[string]*clusterv3.Cluster{},
		routes: map[string]*routev3.RouteConfiguration{}, endpoints: map[string]*endpointv3.ClusterLoadAssignment{}, secrets: map[string]*tlsv3.Secret{}}
	fetch := func(typeURL string, names []string, into func(*discoveryv3.DiscoveryResponse)) {
		t.Helper()
		if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: name, Cluster: name}, TypeUrl: typeURL, ResourceNames: names}); err != nil {
			t.Fatalf("node %s: request %s: %v", name, typeURL, err)
		}
		for {
			resp, err := stream.Recv()
			if err != nil {
				t.Fatalf("node %s: waiting for %s %v: %v", name, typeURL, names, err)
			}
			if resp.GetTypeUrl() == typeURL {
				into(resp)
				return
			}
		}
	}
	unpackAll := func(resp *discoveryv3.DiscoveryResponse, msg func() proto.Message, keep func(proto.Message)) {
		for _, a := range resp.GetResources() {
			m := msg()
			if err := a.UnmarshalTo(m); err != nil {
				t.Fatalf("node %s: %s: %v", name, resp.GetTypeUrl(), err)
			}
			keep(m)
		}
	}
	fetch(resource.ListenerType, nil, func(r *discoveryv3.DiscoveryResponse) {
		unpackAll(r, func() proto.Message { return &listenerv3.Listener{} }, func(m proto.Message) {
			l := m.(*listenerv3.Listener)
			v.listeners[l.GetName()] = l
		})
	})
	fetch(resource.ClusterType, nil, func(r *discoveryv3.DiscoveryResponse) {
		unpackAll(r, func() proto.Message { return &clusterv3.Cluster{} }, func(m proto.Message) {
			c := m.(*clusterv3.Cluster)
			v.clusters[c.GetName()] = c
		})
	})
	var rds, eds, sds []string
	addName := func(list *[]string, n string) {
		if n != "" && !slices.Contains(*list, n) {
			*list = append(*list, n)
		}
	}
	var sdsConfigs []*tlsv3.SdsSecretConfig
	for _, l := range v.listeners {
		if h := listenerHCM(t, l); h.GetRds() != nil {
			addName(&rds, h.GetRds().GetRouteConfigName())
		}
		sdsConfigs = append(sdsConfigs, tlsSecretConfigs(t, l.GetFilterChains()[0].GetTransportSocket(), &tlsv3.DownstreamTlsContext{})...)
	}
	for _, c := range v.clusters {
		if c.GetType() == clusterv3.Cluster_EDS {
			n := c.GetEdsClusterConfig().GetServiceName()
			if n == "" {
				n = c.GetName()
			}
			addName(&eds, n)
		}
		sdsConfigs = append(sdsConfigs, tlsSecretConfigs(t, c.GetTransportSocket(), &tlsv3.UpstreamTlsContext{})...)
	}
	for _, c := range sdsConfigs {
		addName(&sds, c.GetName())
		src := c.GetSdsConfig()
		if agentSocket == "" {
			if src.GetAds() == nil {
				t.Fatalf("node %s: secret %q does not come over ADS", name, c.GetName())
			}
			continue
		}
		gs := src.GetApiConfigSource().GetGrpcServices()
		if len(gs) != 1 || gs[0].GetEnvoyGrpc().GetClusterName() != mesh.AgentSDSCluster {
			t.Fatalf("agent node %s: secret %q is not taken from cluster %s (the agent's socket): %v", name, c.GetName(), mesh.AgentSDSCluster, src)
		}
	}
	slices.Sort(rds)
	slices.Sort(eds)
	slices.Sort(sds)
	if len(rds) > 0 {
		fetch(resource.RouteType, rds, func(r *discoveryv3.DiscoveryResponse) {
			unpackAll(r, func() proto.Message { return &routev3.RouteConfiguration{} }, func(m proto.Message) {
				rc := m.(*routev3.RouteConfiguration)
				v.routes[rc.GetName()] = rc
			})
		})
	}
	if len(eds) > 0 {
		fetch(resource.EndpointType, eds, func(r *discoveryv3.DiscoveryResponse) {
			unpackAll(r, func() proto.Message { return &endpointv3.ClusterLoadAssignment{} }, func(m proto.Message) {
				la := m.(*endpointv3.ClusterLoadAssignment)
				v.endpoints[la.GetClusterName()] = la
			})
		})
	}
	if len(sds) > 0 && agentSocket != "" {
		v.secrets = agentSecrets(t, agentSocket, sds...)
	} else if len(sds) > 0 {
		fetch(resource.SecretType, sds, func(r *discoveryv3.DiscoveryResponse) {
			unpackAll(r, func() proto.Message { return &tlsv3.Secret{} }, func(m proto.Message) {
				s := m.(*tlsv3.Secret)
				v.secrets[s.GetName()] = s
			})
		})
	}
	return v
}

func listenerHCM(t *testing.T, l *listenerv3.Listener) *hcmv3.HttpConnectionManager {
	t.Helper()
	h := &hcmv3.HttpConnectionManager{}
	if err := l.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(h); err != nil {
		t.Fatalf("listener %s: %v", l.GetName(), err)
	}
	return h
}

// tlsContext unpacks a TLS transport socket into into (a Downstream- or
// UpstreamTlsContext); false without TLS.
func tlsContext(t *testing.T, ts *corev3.TransportSocket, into proto.Message) bool {
	t.Helper()
	if ts == nil {
		return false
	}
	if err := ts.GetTypedConfig().UnmarshalTo(into); err != nil {
		t.Fatalf("transport socket %s: %v", ts.GetName(), err)
	}
	return true
}

type commonTLSHolder interface {
	GetCommonTlsContext() *tlsv3.CommonTlsContext
}

// tlsSecretConfigs are the SDS secrets a TLS transport socket names: its
// certificates and its validation context.
func tlsSecretConfigs(t *testing.T, ts *corev3.TransportSocket, ctx commonTLSHolder) []*tlsv3.SdsSecretConfig {
	t.Helper()
	if !tlsContext(t, ts, ctx.(proto.Message)) {
		return nil
	}
	c := ctx.GetCommonTlsContext()
	out := slices.Clone(c.GetTlsCertificateSdsSecretConfigs())
	if vc := c.GetCombinedValidationContext().GetValidationContextSdsSecretConfig(); vc.GetName() != "" {
		out = append(out, vc)
	}
	return out
}

// ownCert is the leaf certificate of a TLS context's SDS certificate, as
// the node received it.
func (v *nodeView) ownCert(t *testing.T, c *tlsv3.CommonTlsContext) *x509.Certificate {
	t.Helper()
	cfgs := c.GetTlsCertificateSdsSecretConfigs()
	if len(cfgs) != 1 {
		t.Fatalf("node %s: %d certificates in a TLS context, want 1", v.name, len(cfgs))
	}
	s := v.secrets[cfgs[0].GetName()]
	if s == nil {
		t.Fatalf("node %s is not served the secret %q its TLS context presents (it has %v)", v.name, cfgs[0].GetName(), slices.Sorted(maps.Keys(v.secrets)))
	}
	block, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if block == nil {
		t.Fatalf("node %s: secret %q holds no certificate", v.name, s.GetName())
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatalf("node %s: secret %q: %v", v.name, s.GetName(), err)
	}
	return cert
}

// sanAllows reports whether Envoy's URI SAN matchers let id through.
func sanAllows(ms []*tlsv3.SubjectAltNameMatcher, id string) bool {
	for _, m := range ms {
		if m.GetSanType() != tlsv3.SubjectAltNameMatcher_URI {
			continue
		}
		if e := m.GetMatcher().GetExact(); e != "" && e == id {
			return true
		}
		if p := m.GetMatcher().GetPrefix(); p != "" && strings.HasPrefix(id, p) {
			return true
		}
	}
	return false
}

func uriOf(c *x509.Certificate) string {
	if len(c.URIs) != 1 {
		return ""
	}
	return c.URIs[0].String()
}

// listenerOn finds the listener that a connection to port on this host
// reaches, across every node (all run on one host in the walkthrough).
func listenerOn(views []*nodeView, port uint32) (*nodeView, *listenerv3.Listener) {
	for _, v := range views {
		for _, l := range v.listeners {
			if l.GetAddress().GetSocketAddress().GetPortValue() == port {
				return v, l
			}
		}
	}
	return nil, nil
}

// routeFor picks the route Envoy uses for a GET of path with only the
// Host header set: the virtual host whose domain equals host, else "*",
// then the first route whose prefix or path matches and that has no
// header matchers.
func routeFor(rc *routev3.RouteConfiguration, host, path string) (*routev3.VirtualHost, *routev3.Route) {
	var vh, wildcard *routev3.VirtualHost
	for _, h := range rc.GetVirtualHosts() {
		for _, d := range h.GetDomains() {
			switch {
			case vh == nil && strings.EqualFold(d, host):
				vh = h
			case wildcard == nil && d == "*":
				wildcard = h
			}
		}
	}
	if vh == nil {
		vh = wildcard
	}
	if vh == nil {
		return nil, nil
	}
	for _, r := range vh.GetRoutes() {
		m := r.GetMatch()
		if len(m.GetHeaders()) > 0 {
			continue
		}
		if (m.GetPrefix() != "" && strings.HasPrefix(path, m.GetPrefix())) || (m.GetPath() != "" && m.GetPath() == path) {
			return vh, r
		}
	}
	return vh, nil
}

// curlCall is one curl command of the walkthrough, as the stub saw it.
type curlCall struct {
	args    []string
	url     *url.URL
	resolve map[string]string // host:port -> address
	cert    string            // --cert file, relative to the walkthrough's directory
}

func parseCurl(t *testing.T, line string) curlCall {
	t.Helper()
	c := curlCall{args: strings.Fields(line), resolve: map[string]string{}}
	for i := 0; i < len(c.args); i++ {
		a := c.args[i]
		switch {
		case a == "--resolve" && i+1 < len(c.args):
			i++
			parts := strings.SplitN(c.args[i], ":", 3)
			if len(parts) == 3 {
				c.resolve[parts[0]+":"+parts[1]] = parts[2]
			}
		case a == "--cert" && i+1 < len(c.args):
			i++
			c.cert = c.args[i]
		case strings.HasPrefix(a, "http://") || strings.HasPrefix(a, "https://"):
			u, err := url.Parse(a)
			if err != nil {
				t.Fatalf("curl %s: %v", line, err)
			}
			c.url = u
		}
	}
	if c.url == nil {
		t.Fatalf("curl %s: no URL", line)
	}
	return c
}

// checkWalkthroughMesh checks what each node of the walkthrough's server
// (admin and xDS addresses) receives against the walkthrough: every curl
// after the last mesh apply reaches a listener of a node and a route for
// its Host, HTTPS listeners present a certificate for that host and accept
// curl's client certificate, and every mTLS cluster's SAN matchers expect
// an identity that exists and is presented, by a node that holds it, on
// the listener its endpoints point at, which in turn accepts the calling
// node's certificate. The secrets of the agent nodes named in sockets come
// from their agents' SDS sockets.
func checkWalkthroughMesh(t *testing.T, dir string, curls []string, admin, xdsAddr string, sockets map[string]string) {
	var nodes []api.Node
	if err := json.Unmarshal([]byte(mustRun(t, admin, "node", "list", "-o", "json")), &nodes); err != nil {
		t.Fatal(err)
	}
	var views []*nodeView
	for _, n := range nodes {
		nodeDir := filepath.Join(dir, "demo", n.Name)
		if _, err := os.Stat(nodeDir); err != nil {
			t.Fatalf("node %s has no directory in demo/: %v", n.Name, err)
		}
		views = append(views, fetchNode(t, xdsAddr, nodeDir, n.Name, sockets[n.Name]))
	}
	identityState := func(name string) string {
		r := meshca(t, admin, "identity", "show", name, "-o", "json")
		if r.code != 0 {
			return "missing"
		}
		var id api.Identity
		if err := json.Unmarshal([]byte(r.stdout), &id); err != nil {
			t.Fatal(err)
		}
		return id.State
	}

	if len(curls) == 0 {
		t.Fatal("no curl after the last mesh apply")
	}
	for _, line := range curls {
		c := parseCurl(t, line)
		port := c.url.Port()
		if port == "" {
			port = map[string]string{"http": "80", "https": "443"}[c.url.Scheme]
		}
		p, _ := strconv.Atoi(port)
		host := c.url.Host // curl sends the port when it is not the scheme's default
		if addr, ok := c.resolve[c.url.Hostname()+":"+port]; ok {
			if ip := net.ParseIP(addr); ip == nil || !ip.IsLoopback() {
				t.Fatalf("curl %s resolves to %s, not this host", line, addr)
			}
		} else if c.url.Hostname() != "localhost" && c.url.Hostname() != "127.0.0.1" {
			t.Fatalf("curl %s: %s does not resolve to this host (no --resolve)", line, c.url.Hostname())
		}
		v, l := listenerOn(views, uint32(p))
		if l == nil {
			t.Fatalf("curl %s: no node listens on port %d", line, p)
		}
		h := listenerHCM(t, l)
		rc := h.GetRouteConfig()
		if rc == nil {
			rc = v.routes[h.GetRds().GetRouteConfigName()]
		}
		if rc == nil {
			t.Fatalf("curl %s: node %s is not served route %q of listener %s", line, v.name, h.GetRds().GetRouteConfigName(), l.GetName())
		}
		vh, route := routeFor(rc, host, c.url.EscapedPath())
		if route == nil {
			var domains []string
			for _, vh := range rc.GetVirtualHosts() {
				domains = append(domains, vh.GetDomains()...)
			}
			t.Fatalf("curl %s: Host %q matches no route on node %s listener %s (route %q answers %v)", line, host, v.name, l.GetName(), rc.GetName(), domains)
		}
		target := "redirect"
		if cl := route.GetRoute().GetCluster(); cl != "" {
			target = "cluster " + cl
			if v.clusters[cl] == nil {
				t.Fatalf("curl %s: route %q sends to cluster %q, which node %s does not have", line, rc.GetName(), cl, v.name)
			}
		} else if route.GetRedirect() == nil {
			target = "weighted clusters"
		}
		if c.url.Scheme == "https" {
			dtc := &tlsv3.DownstreamTlsContext{}
			if !tlsContext(t, l.GetFilterChains()[0].GetTransportSocket(), dtc) {
				t.Fatalf("curl %s: listener %s of node %s has no TLS", line, l.GetName(), v.name)
			}
			served := v.ownCert(t, dtc.GetCommonTlsContext())
			if err := served.VerifyHostname(c.url.Hostname()); err != nil {
				t.Fatalf("curl %s: the certificate node %s presents on %s does not name the host: %v", line, v.name, l.GetName(), err)
			}
			if dtc.GetRequireClientCertificate().GetValue() {
				if c.cert == "" {
					t.Fatalf("curl %s: listener %s requires a client certificate and curl sends none", line, l.GetName())
				}
				client := testkit.ParseCertPEM(t, mustRead(t, filepath.Join(dir, c.cert)))
				sans := dtc.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
				if !sanAllows(sans, uriOf(client)) {
					t.Fatalf("curl %s: listener %s does not allow curl's client certificate %s", line, l.GetName(), uriOf(client))
				}
			}
		}
		t.Logf("curl %s -> node %s listener %s, virtual host %v, %s", c.url, v.name, l.GetName(), vh.GetDomains(), target)
	}

	checked := 0
	for _, v := range views {
		for _, name := range slices.Sorted(maps.Keys(v.clusters)) {
			cl := v.clusters[name]
			utc := &tlsv3.UpstreamTlsContext{}
			if !tlsContext(t, cl.GetTransportSocket(), utc) {
				continue
			}
			caller := uriOf(v.ownCert(t, utc.GetCommonTlsContext()))
			sans := utc.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames()
			var expected []string
			for _, m := range sans {
				if e := m.GetMatcher().GetExact(); e != "" {
					expected = append(expected, e)
				}
			}
			if len(expected) == 0 {
				t.Fatalf("node %s cluster %s: no exact SAN matcher", v.name, name)
			}
			for _, id := range expected {
				ident := id[strings.LastIndex(id, "/")+1:]
				if st := identityState(ident); st != "active" {
					t.Fatalf("node %s cluster %s expects %s: identity %q is %s", v.name, name, id, ident, st)
				}
			}
			la := cl.GetLoadAssignment()
			if la == nil {
				la = v.endpoints[name]
			}
			eps := 0
			for _, loc := range la.GetEndpoints() {
				for _, lb := range loc.GetLbEndpoints() {
					sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
					eps++
					if ip := net.ParseIP(sa.GetAddress()); ip == nil || !ip.IsLoopback() {
						t.Fatalf("node %s cluster %s: endpoint %s is not on this host", v.name, name, sa.GetAddress())
					}
					peer, l := listenerOn(views, sa.GetPortValue())
					if l == nil {
						t.Fatalf("node %s cluster %s: no node listens on endpoint port %d", v.name, name, sa.GetPortValue())
					}
					dtc := &tlsv3.DownstreamTlsContext{}
					if !tlsContext(t, l.GetFilterChains()[0].GetTransportSocket(), dtc) {
						t.Fatalf("node %s cluster %s: listener %s of node %s has no TLS", v.name, name, l.GetName(), peer.name)
					}
					presented := uriOf(peer.ownCert(t, dtc.GetCommonTlsContext()))
					if !sanAllows(sans, presented) {
						t.Fatalf("node %s cluster %s expects %v, node %s presents %s on %s", v.name, name, expected, peer.name, presented, l.GetName())
					}
					if !sanAllows(dtc.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchTypedSubjectAltNames(), caller) {
						t.Fatalf("node %s listener %s does not accept %s, the certificate node %s calls it with (cluster %s)", peer.name, l.GetName(), caller, v.name, name)
					}
					t.Logf("node %s cluster %s -> node %s listener %s presents %s, accepts %s", v.name, name, peer.name, l.GetName(), presented, caller)
					checked++
				}
			}
			if eps == 0 {
				t.Fatalf("node %s cluster %s has no endpoints", v.name, name)
			}
		}
	}
	if checked == 0 {
		t.Fatal("no mTLS cluster in the walkthrough's final mesh")
	}
}
