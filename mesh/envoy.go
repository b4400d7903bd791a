package mesh

import (
	"fmt"
	"slices"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigv3 "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/nodeapi"
)

// Extension names, as Envoy and grpc-go expect them.
const (
	hcmFilterName      = "envoy.filters.network.http_connection_manager"
	routerFilterName   = "envoy.filters.http.router"
	rbacFilterName     = "envoy.filters.http.rbac"
	tlsSocketName      = "envoy.transport_sockets.tls"
	httpProtocolOptKey = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
	connectTimeout     = 5 * time.Second
)

// ads is the config source of every dynamic resource and secret: the ADS
// stream the node already has.
func ads() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

// AgentSDSCluster is the cluster an agent node's Envoy bootstrap declares
// for its node agent's SDS socket (a pipe address, HTTP/2).
const AgentSDSCluster = nodeapi.AgentSDSCluster

// agentSDS is the config source of an agent node's secrets: its node
// agent, through the local AgentSDSCluster. Listeners, clusters, routes and
// endpoints still come over ADS.
func agentSDS() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_ApiConfigSource{ApiConfigSource: &corev3.ApiConfigSource{
			ApiType:                   corev3.ApiConfigSource_GRPC,
			TransportApiVersion:       corev3.ApiVersion_V3,
			SetNodeOnFirstMessageOnly: true,
			GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
				EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: AgentSDSCluster},
			}}},
		}},
	}
}

func sdsSecret(source *corev3.ConfigSource, name string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: source}
}

// mustAny packs m. Marshalling a generated message built here cannot fail;
// a failure would be a bug, so it panics rather than publish a hole.
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(fmt.Sprintf("mesh: pack %T: %v", m, err))
	}
	return a
}

func socketAddress(addr string, port int) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address:       addr,
		PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)},
	}}}
}

// sanMatchers turns allowed SPIFFE IDs into URI SAN matchers; none means
// any ID of the trust domain (the bundle alone would allow that too, the
// matcher says it explicitly).
func sanMatchers(root string, ms []SPIFFEMatch) []*tlsv3.SubjectAltNameMatcher {
	if len(ms) == 0 {
		ms = []SPIFFEMatch{{Prefix: root}}
	}
	out := make([]*tlsv3.SubjectAltNameMatcher, 0, len(ms))
	for _, m := range ms {
		sm := &matcherv3.StringMatcher{}
		if m.Exact != "" {
			sm.MatchPattern = &matcherv3.StringMatcher_Exact{Exact: m.Exact}
		} else {
			sm.MatchPattern = &matcherv3.StringMatcher_Prefix{Prefix: m.Prefix}
		}
		out = append(out, &tlsv3.SubjectAltNameMatcher{SanType: tlsv3.SubjectAltNameMatcher_URI, Matcher: sm})
	}
	return out
}

// commonTLS presents own's certificate and, when sans is not nil, checks
// the peer against the bundle and the SAN matchers. Both secrets come over
// SDS from source: the ADS stream, or an agent node's local agent.
func commonTLS(source *corev3.ConfigSource, own, bundle string, sans []*tlsv3.SubjectAltNameMatcher, alpn []string) *tlsv3.CommonTlsContext {
	c := &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{sdsSecret(source, own)},
		AlpnProtocols:                  alpn,
	}
	if sans != nil {
		c.ValidationContextType = &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: sans},
				ValidationContextSdsSecretConfig: sdsSecret(source, bundle),
			},
		}
	}
	return c
}

func downstreamTLS(c *tlsv3.CommonTlsContext, require bool) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: tlsSocketName, ConfigType: &corev3.TransportSocket_TypedConfig{
		TypedConfig: mustAny(&tlsv3.DownstreamTlsContext{
			CommonTlsContext:         c,
			RequireClientCertificate: wrapperspb.Bool(require),
		}),
	}}
}

func upstreamTLS(c *tlsv3.CommonTlsContext) *corev3.TransportSocket {
	return &corev3.TransportSocket{Name: tlsSocketName, ConfigType: &corev3.TransportSocket_TypedConfig{
		TypedConfig: mustAny(&tlsv3.UpstreamTlsContext{CommonTlsContext: c}),
	}}
}

// httpManager is an HCM with the router as its only (terminal) filter,
// using RDS rdsName or, when rdsName is empty, the inline route config.
func httpManager(stat, rdsName string, inline *routev3.RouteConfiguration) *hcmv3.HttpConnectionManager {
	h := &hcmv3.HttpConnectionManager{
		StatPrefix: stat,
		HttpFilters: []*hcmv3.HttpFilter{{
			Name:       routerFilterName,
			ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{})},
		}},
	}
	if rdsName != "" {
		h.RouteSpecifier = &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{ConfigSource: ads(), RouteConfigName: rdsName}}
	} else {
		h.RouteSpecifier = &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: inline}
	}
	return h
}

func listener(name, addr string, port int, h *hcmv3.HttpConnectionManager, ts *corev3.TransportSocket) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:    name,
		Address: socketAddress(addr, port),
		FilterChains: []*listenerv3.FilterChain{{
			Filters: []*listenerv3.Filter{{
				Name:       hcmFilterName,
				ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(h)},
			}},
			TransportSocket: ts,
		}},
	}
}

// routeOpts shape a route config for one kind of client.
type routeOpts struct {
	grpc  bool                        // proxyless gRPC: see grpcRoute
	extra []*corev3.HeaderValueOption // added after the route's own headers
}

func overwrite(name, value string) *corev3.HeaderValueOption {
	return &corev3.HeaderValueOption{
		Header:       &corev3.HeaderValue{Key: name, Value: value},
		AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD,
	}
}

// routeConfig renders a mesh route as a RouteConfiguration called name.
// For grpc nodes the virtual host matches any domain (grpc-go picks it by
// the dialed name, which has nothing to do with HTTP domains), weight-0
// targets are left out of the route (grpc-go would drop them; their
// clusters stay, see builder.grpc) and only gRPC retry conditions are kept.
func routeConfig(name string, r *Route, o routeOpts) *routev3.RouteConfiguration {
	vh := &routev3.VirtualHost{Name: r.Name, Domains: slices.Clone(r.Domains)}
	if o.grpc {
		vh.Domains = []string{"*"}
	}
	for _, h := range r.ResponseHeaders {
		vh.ResponseHeadersToAdd = append(vh.ResponseHeadersToAdd, overwrite(h.Name, h.Value))
	}
	vh.ResponseHeadersToAdd = append(vh.ResponseHeadersToAdd, o.extra...)
	for _, rule := range r.Rules {
		vh.Routes = append(vh.Routes, &routev3.Route{
			Match:  routeMatch(rule.Match),
			Action: &routev3.Route_Route{Route: routeAction(rule, o.grpc)},
		})
	}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{vh}}
}

func routeMatch(m Match) *routev3.RouteMatch {
	rm := &routev3.RouteMatch{}
	if m.Path != "" {
		rm.PathSpecifier = &routev3.RouteMatch_Path{Path: m.Path}
	} else {
		rm.PathSpecifier = &routev3.RouteMatch_Prefix{Prefix: m.Prefix}
	}
	for _, h := range m.Headers {
		hm := &routev3.HeaderMatcher{Name: h.Name, InvertMatch: h.Invert}
		switch {
		case h.Present:
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_PresentMatch{PresentMatch: true}
		case h.Exact != "":
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Exact{Exact: h.Exact}}}
		default:
			hm.HeaderMatchSpecifier = &routev3.HeaderMatcher_StringMatch{StringMatch: &matcherv3.StringMatcher{
				MatchPattern: &matcherv3.StringMatcher_Prefix{Prefix: h.Prefix}}}
		}
		rm.Headers = append(rm.Headers, hm)
	}
	return rm
}

func routeAction(rule Rule, grpc bool) *routev3.RouteAction {
	a := &routev3.RouteAction{}
	if rule.Service != "" {
		a.ClusterSpecifier = &routev3.RouteAction_Cluster{Cluster: rule.Service}
	} else {
		wc := &routev3.WeightedCluster{}
		for _, w := range rule.Weighted {
			if grpc && *w.Weight == 0 {
				continue
			}
			wc.Clusters = append(wc.Clusters, &routev3.WeightedCluster_ClusterWeight{
				Name: w.Service, Weight: wrapperspb.UInt32(uint32(*w.Weight)),
			})
		}
		a.ClusterSpecifier = &routev3.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	if rule.Timeout != "" {
		d := durationpb.New(mustDuration(rule.Timeout))
		if grpc {
			a.MaxStreamDuration = &routev3.RouteAction_MaxStreamDuration{MaxStreamDuration: d}
		} else {
			a.Timeout = d
		}
	}
	if rt := rule.Retries; rt != nil {
		on := rt.On
		if grpc {
			on = slices.DeleteFunc(slices.Clone(on), func(c string) bool { return !slices.Contains(grpcRetryOn, c) })
		}
		if len(on) > 0 {
			p := &routev3.RetryPolicy{RetryOn: strings.Join(on, ","), NumRetries: wrapperspb.UInt32(uint32(rt.NumRetries))}
			if rt.PerTryTimeout != "" {
				p.PerTryTimeout = durationpb.New(mustDuration(rt.PerTryTimeout))
			}
			a.RetryPolicy = p
		}
	}
	return a
}

// mustDuration parses a duration that validation already accepted.
func mustDuration(s string) time.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(fmt.Sprintf("mesh: duration %q passed validation: %v", s, err))
	}
	return d
}

// redirectConfig sends every plain HTTP request to https on httpsPort; the
// port must be given or Envoy drops it from the Location.
func redirectConfig(name string, httpsPort int, code string) *routev3.RouteConfiguration {
	rc := routev3.RedirectAction_PERMANENT_REDIRECT
	if code == RedirectMoved {
		rc = routev3.RedirectAction_MOVED_PERMANENTLY
	}
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name:    "https_redirect",
		Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Redirect{Redirect: &routev3.RedirectAction{
				SchemeRewriteSpecifier: &routev3.RedirectAction_HttpsRedirect{HttpsRedirect: true},
				PortRedirect:           uint32(httpsPort),
				ResponseCode:           rc,
			}},
		}},
	}}}
}

// directConfig routes everything to one cluster (sidecar listeners).
func directConfig(name, cluster string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name:    name,
		Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster}}},
		}},
	}}}
}

func hstsValue(h *HSTS) string {
	v := fmt.Sprintf("max-age=%d", h.MaxAge)
	if h.IncludeSubdomains {
		v += "; includeSubDomains"
	}
	if h.Preload {
		v += "; preload"
	}
	return v
}

// cluster is the cluster of a service. Services with only IP endpoints use
// EDS (the caller adds the ClusterLoadAssignment); a host name endpoint
// makes it STRICT_DNS with the endpoints inline.
func cluster(s *Service, ts *corev3.TransportSocket, http2 bool) (*clusterv3.Cluster, bool) {
	c := &clusterv3.Cluster{
		Name:            s.Name,
		ConnectTimeout:  durationpb.New(connectTimeout),
		LbPolicy:        clusterv3.Cluster_ROUND_ROBIN,
		TransportSocket: ts,
	}
	eds := true
	for _, e := range s.Endpoints {
		if !netIP(e.Address) {
			eds = false
		}
	}
	if eds {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS}
		c.EdsClusterConfig = &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads()}
	} else {
		c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STRICT_DNS}
		c.LoadAssignment = loadAssignment(s)
	}
	if http2 {
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{httpProtocolOptKey: mustAny(&httpv3.HttpProtocolOptions{
			UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{
				ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}},
			}},
		})}
	}
	return c, eds
}

// localCluster is the application next to a sidecar, at 127.0.0.1.
func localCluster(name string, port int, http2 bool) *clusterv3.Cluster {
	s := &Service{Name: name, Endpoints: []Endpoint{{Address: "127.0.0.1", Port: port, Weight: ptr(1)}}}
	c, _ := cluster(s, nil, http2)
	c.ClusterDiscoveryType = &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC}
	c.EdsClusterConfig = nil
	c.LoadAssignment = loadAssignment(s)
	return c
}

// loadAssignment groups a service's endpoints by locality, in sorted
// locality order. Every group has a locality (grpc-go NACKs a nil one) and
// a weight, the sum of its endpoints' weights (grpc-go ignores a
// locality of weight 0).
func loadAssignment(s *Service) *endpointv3.ClusterLoadAssignment {
	groups := map[Locality]*endpointv3.LocalityLbEndpoints{}
	var keys []Locality
	for _, e := range s.Endpoints {
		var l Locality
		if e.Locality != nil {
			l = *e.Locality
		}
		g := groups[l]
		if g == nil {
			g = &endpointv3.LocalityLbEndpoints{
				Locality:            &corev3.Locality{Region: l.Region, Zone: l.Zone, SubZone: l.SubZone},
				LoadBalancingWeight: wrapperspb.UInt32(0),
			}
			groups[l] = g
			keys = append(keys, l)
		}
		w := uint32(*e.Weight)
		g.LbEndpoints = append(g.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(e.Address, e.Port),
			}},
			LoadBalancingWeight: wrapperspb.UInt32(w),
		})
		g.LoadBalancingWeight.Value += w
	}
	slices.SortFunc(keys, func(a, b Locality) int {
		return strings.Compare(a.Region+"\x00"+a.Zone+"\x00"+a.SubZone, b.Region+"\x00"+b.Zone+"\x00"+b.SubZone)
	})
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: s.Name}
	for _, k := range keys {
		cla.Endpoints = append(cla.Endpoints, groups[k])
	}
	return cla
}

// GRPCServerListenerTemplate is the server_listener_resource_name_template
// of the grpc bootstrap: grpc-go replaces %s with the address a server
// listens on ("10.0.0.5:50051", "[::1]:50051") and asks for that listener.
const GRPCServerListenerTemplate = nodeapi.GRPCServerListenerTemplate

// GRPCServerListenerName is the listener an xDS gRPC server listening on
// hostPort (net.JoinHostPort form) asks for.
func GRPCServerListenerName(hostPort string) string {
	return fmt.Sprintf(GRPCServerListenerTemplate, hostPort)
}

// grpcTLS presents own's certificate from its certificate provider
// instance and verifies the peer against the trust bundle the same
// instance reads. A non-empty peer is the SPIFFE ID the peer must carry;
// grpc-go reads it from the deprecated match_subject_alt_names only, and
// refuses it on the server side.
func grpcTLS(own, peer string) *tlsv3.CommonTlsContext {
	inst := &tlsv3.CertificateProviderPluginInstance{InstanceName: agentfiles.Instance(own)}
	vc := &tlsv3.CertificateValidationContext{CaCertificateProviderInstance: inst}
	if peer != "" {
		vc.MatchSubjectAltNames = []*matcherv3.StringMatcher{{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: peer}}}
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: inst,
		ValidationContextType:          &tlsv3.CommonTlsContext_ValidationContext{ValidationContext: vc},
	}
}

// allowCallers is an RBAC filter that lets in only callers whose
// certificate's URI SAN matches ms (none: any ID under root). grpc-go
// matches principal_name against the URI SAN first.
func allowCallers(root string, ms []SPIFFEMatch) *hcmv3.HttpFilter {
	var principals []*rbacconfigv3.Principal
	for _, m := range sanMatchers(root, ms) {
		principals = append(principals, &rbacconfigv3.Principal{Identifier: &rbacconfigv3.Principal_Authenticated_{
			Authenticated: &rbacconfigv3.Principal_Authenticated{PrincipalName: m.GetMatcher()},
		}})
	}
	rules := &rbacconfigv3.RBAC{Action: rbacconfigv3.RBAC_ALLOW, Policies: map[string]*rbacconfigv3.Policy{
		"allowed_spiffe_ids": {
			Permissions: []*rbacconfigv3.Permission{{Rule: &rbacconfigv3.Permission_Any{Any: true}}},
			Principals:  principals,
		},
	}}
	return &hcmv3.HttpFilter{Name: rbacFilterName, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&rbacv3.RBAC{Rules: rules})}}
}

// serverRoutes sends every RPC of an xDS gRPC server to its own handlers
// (grpc-go fails RPCs that match any other action).
func serverRoutes(name string) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{Name: name, VirtualHosts: []*routev3.VirtualHost{{
		Name:    "grpc_server",
		Domains: []string{"*"},
		Routes: []*routev3.Route{{
			Match:  &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}},
			Action: &routev3.Route_NonForwardingAction{NonForwardingAction: &routev3.NonForwardingAction{}},
		}},
	}}}
}
