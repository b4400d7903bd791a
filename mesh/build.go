package mesh

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"
	"sort"
	"strconv"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/nodeapi"
)

// Node kinds, as the registry stores them: nodeapi's, the contract with
// the nodes, which do not link mesh.
const (
	KindSidecar    = nodeapi.KindSidecar
	KindFrontProxy = nodeapi.KindFrontProxy
	KindGRPC       = nodeapi.KindGRPC
)

// Kinds returns every node kind.
func Kinds() []string { return []string{KindSidecar, KindFrontProxy, KindGRPC} }

// IsKind reports whether s is a node kind.
func IsKind(s string) bool { return slices.Contains(Kinds(), s) }

// Node is what Build knows about one node.
type Node struct {
	Name       string
	Kind       string   // KindSidecar, KindFrontProxy or KindGRPC
	Identities []string // identity names assigned to the node
	// Agent marks a node whose node agent holds its identities' keys.
	// Its proxy takes secrets over SDS from the agent's local socket: every
	// SDS config source points at AgentSDSCluster instead of the ADS
	// stream. A grpc agent node reads them from the files the agent writes
	// (see internal/agentfiles) and gets mTLS clusters and server listeners.
	Agent bool
}

// Resources is one node's configuration: the complete state of the four
// types, each sorted by name. Secrets are only named.
type Resources struct {
	// ByType always has the keys resource.ListenerType, RouteType,
	// ClusterType and EndpointType (possibly with empty lists, which mean
	// "none": LDS and CDS are full state).
	ByType map[string][]types.Resource
	// Secrets are the SDS secrets the resources reference, sorted and
	// unique: the trust bundle (spiffe://<td>) and the SPIFFE IDs of
	// identities the node holds.
	Secrets []string
}

// resourceTypes are the types Build returns, in dependency order.
var resourceTypes = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

func emptyResources() Resources {
	r := Resources{ByType: map[string][]types.Resource{}, Secrets: []string{}}
	for _, t := range resourceTypes {
		r.ByType[t] = []types.Resource{}
	}
	return r
}

// Build computes node n's resources from mesh m for trust domain td. A nil
// m gives the node no listeners or clusters. The output is deterministic,
// passes validate.Message and the semantic checks of check.go, and only
// ever presents certificates of identities that n holds.
//
// A front-proxy node that does not hold front_proxy.identity gets no
// resources at all and ErrMissingIdentity. A sidecar node gets a
// configuration for each sidecars entry whose service identity it holds
// (none: no resources, no error). grpc nodes get every grpc entry. Errors
// wrap ErrInvalid, ErrMissingIdentity, ErrConflict or ErrUnknownKind; with
// an error the returned Resources are empty.
func Build(m *Mesh, n Node, td spiffeid.TrustDomain) (Resources, error) {
	switch n.Kind {
	case KindSidecar, KindFrontProxy, KindGRPC:
	default:
		return emptyResources(), fmt.Errorf("mesh: node %q: %w %q (use %s, %s or %s)", n.Name, ErrUnknownKind, clip(n.Kind), KindSidecar, KindFrontProxy, KindGRPC)
	}
	if m == nil {
		return emptyResources(), nil
	}
	mm, err := checked(m, td)
	if err != nil {
		return emptyResources(), err
	}
	b, err := newBuilder(mm, n, td)
	if err != nil {
		return emptyResources(), err
	}
	switch n.Kind {
	case KindFrontProxy:
		b.frontProxy()
	case KindSidecar:
		b.sidecars()
	case KindGRPC:
		b.grpc()
	}
	if len(b.errs) > 0 {
		return emptyResources(), fmt.Errorf("mesh: node %q: %w", n.Name, errors.Join(b.errs...))
	}
	res := b.resources()
	if mm.AccessLog && n.Kind != KindGRPC {
		addAccessLogs(res.ByType[resource.ListenerType])
	}
	if err := check(&res, td, b.heldIDs, b.instances); err != nil {
		return emptyResources(), fmt.Errorf("mesh: node %q: %w", n.Name, err)
	}
	return res, nil
}

// checked returns m validated and defaulted for td: m itself when Parse
// made it for td, otherwise a copy through Marshal and Parse, so that a
// Mesh assembled in code gets the same checks as a parsed file and is never
// modified. Building never writes to the Mesh, so one parsed Mesh serves
// concurrent builds.
func checked(m *Mesh, td spiffeid.TrustDomain) (*Mesh, error) {
	if m.parsed == m && m.parsedTD == td {
		return m, nil
	}
	data, err := m.Marshal()
	if err != nil {
		return nil, err
	}
	return Parse(data, td)
}

// Check builds every node and returns all errors joined (nil when each
// node builds). apply calls it before storing a mesh.
func Check(m *Mesh, nodes []Node, td spiffeid.TrustDomain) error {
	if m != nil {
		if _, err := checked(m, td); err != nil {
			return err // once, not once per node
		}
	}
	var errs []error
	for _, n := range nodes {
		if _, err := Build(m, n, td); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

type builder struct {
	m       *Mesh
	n       Node
	td      spiffeid.TrustDomain
	bundle  string
	secrets *corev3.ConfigSource // where the node's proxy gets secrets
	held    map[string]string    // identity name -> SPIFFE ID
	heldIDs map[string]bool      // SPIFFE IDs of held identities
	// instances are the certificate provider instances of held
	// identities (agentfiles.Instance), for grpc agent nodes.
	instances map[string]bool
	services  map[string]*Service
	routes    map[string]*Route
	sidecar   map[string]*Sidecar
	res       map[string]map[string]types.Resource
	errs      []error
}

func newBuilder(m *Mesh, n Node, td spiffeid.TrustDomain) (*builder, error) {
	b := &builder{
		m: m, n: n, td: td, bundle: td.IDString(), secrets: ads(),
		held: map[string]string{}, heldIDs: map[string]bool{}, instances: map[string]bool{},
		services: map[string]*Service{}, routes: map[string]*Route{}, sidecar: map[string]*Sidecar{},
		res: map[string]map[string]types.Resource{},
	}
	if n.Agent {
		b.secrets = agentSDS()
	}
	for _, name := range n.Identities {
		id, err := identity.ID(td, name)
		if err != nil {
			return nil, fmt.Errorf("mesh: node %q: identity: %w", n.Name, err)
		}
		b.held[name] = id.String()
		b.heldIDs[id.String()] = true
		b.instances[agentfiles.Instance(name)] = true
	}
	for i := range m.Services {
		b.services[m.Services[i].Name] = &m.Services[i]
	}
	for i := range m.Routes {
		b.routes[m.Routes[i].Name] = &m.Routes[i]
	}
	for i := range m.Sidecars {
		b.sidecar[m.Sidecars[i].Service] = &m.Sidecars[i]
	}
	for _, t := range resourceTypes {
		b.res[t] = map[string]types.Resource{}
	}
	return b, nil
}

// add records r; the same name twice is fine only with equal content.
func (b *builder) add(typ string, r types.Resource) {
	name := cachev3.GetResourceName(r)
	if old, ok := b.res[typ][name]; ok {
		if !proto.Equal(old, r) {
			b.errs = append(b.errs, fmt.Errorf("%w: two different %s resources named %q", ErrConflict, typeName(typ), name))
		}
		return
	}
	b.res[typ][name] = r
}

func (b *builder) resources() Resources {
	out := emptyResources()
	for t, byName := range b.res {
		names := make([]string, 0, len(byName))
		for name := range byName {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			out.ByType[t] = append(out.ByType[t], byName[name])
		}
	}
	return out
}

func (b *builder) identityID(name string) string {
	id, err := identity.ID(b.td, name)
	if err != nil {
		// Validation checked every identity name.
		b.errs = append(b.errs, err)
		return ""
	}
	return id.String()
}

// upstream adds the cluster (and EDS) of each service for an Envoy node
// whose client certificate is own. Services with a sidecar are reached
// over mTLS, checking the sidecar's SPIFFE ID.
func (b *builder) upstream(services []string, own string) {
	for _, name := range services {
		s := b.services[name]
		var ts = upstreamSocket(b, s, own)
		c, eds := cluster(s, ts, s.Protocol == ProtocolHTTP2)
		b.add(resource.ClusterType, c)
		if eds {
			b.add(resource.EndpointType, loadAssignment(s))
		}
	}
}

func upstreamSocket(b *builder, s *Service, own string) *corev3.TransportSocket {
	if b.sidecar[s.Name] == nil {
		return nil
	}
	if own == "" {
		b.errs = append(b.errs, fmt.Errorf("%w: service %q needs mTLS, but this node presents no identity", ErrMissingIdentity, s.Name))
		return nil
	}
	peer := b.identityID(s.Identity)
	return upstreamTLS(commonTLS(b.secrets, own, b.bundle, sanMatchers("", []SPIFFEMatch{{Exact: peer}}), alpnFor(s.Protocol)))
}

func alpnFor(protocol string) []string {
	if protocol == ProtocolHTTP2 {
		return []string{"h2"}
	}
	return []string{"http/1.1"}
}

// downstreamALPN lets clients pick HTTP/2 or HTTP/1.1 (the HCM codec is AUTO).
var downstreamALPN = []string{"h2", "http/1.1"}

func (b *builder) frontProxy() {
	f := b.m.FrontProxy
	if f == nil {
		return
	}
	own := ""
	if f.Identity != "" {
		var ok bool
		if own, ok = b.held[f.Identity]; !ok {
			b.errs = append(b.errs, fmt.Errorf("%w %q: front_proxy presents it; assign it to the node, or change front_proxy.identity", ErrMissingIdentity, f.Identity))
			return
		}
	}
	if h := f.HTTPS; h != nil {
		name := "https_" + strconv.Itoa(h.Port)
		var extra []*corev3.HeaderValueOption
		if h.HSTS != nil {
			extra = append(extra, overwrite("strict-transport-security", hstsValue(h.HSTS)))
		}
		r := b.routes[h.Route]
		b.add(resource.RouteType, routeConfig(h.Route, r, routeOpts{extra: extra}))
		b.upstream(routeTargets(r, false), own)
		hcm := httpManager(name, h.Route, nil)
		if h.ForwardClientCert {
			hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
			hcm.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Subject: wrapperspb.Bool(true), Uri: true, Cert: true}
		}
		var sans = sanMatchersFor(b, h.ClientCerts, h.AllowedSPIFFEIDs)
		ts := downstreamTLS(commonTLS(b.secrets, own, b.bundle, sans, downstreamALPN), h.ClientCerts == ClientCertsRequired)
		b.add(resource.ListenerType, listener(name, "0.0.0.0", h.Port, hcm, ts))
	}
	if h := f.HTTP; h != nil {
		name := "http_" + strconv.Itoa(h.Port)
		var hcm *hcmv3.HttpConnectionManager
		if h.RedirectToHTTPS != "" {
			hcm = httpManager(name, "", redirectConfig(name, f.HTTPS.Port, h.RedirectToHTTPS))
		} else {
			r := b.routes[h.Route]
			b.add(resource.RouteType, routeConfig(h.Route, r, routeOpts{}))
			b.upstream(routeTargets(r, false), own)
			hcm = httpManager(name, h.Route, nil)
		}
		b.add(resource.ListenerType, listener(name, "0.0.0.0", h.Port, hcm, nil))
	}
}

// sanMatchersFor returns nil (no client certificate validation) for
// client_certs none.
func sanMatchersFor(b *builder, mode string, ms []SPIFFEMatch) []*tlsv3.SubjectAltNameMatcher {
	if mode == ClientCertsNone {
		return nil
	}
	return sanMatchers(b.bundle+"/", ms)
}

func (b *builder) sidecars() {
	for i := range b.m.Sidecars {
		sc := &b.m.Sidecars[i]
		s := b.services[sc.Service]
		own, ok := b.held[s.Identity]
		if !ok {
			continue // another node's sidecar
		}
		http2 := s.Protocol == ProtocolHTTP2
		// Inbound: mTLS from allowed callers to the local application.
		in := "inbound_" + strconv.Itoa(sc.InboundPort)
		local := "local_" + s.Name
		lc := localCluster(local, sc.AppPort, http2)
		b.add(resource.ClusterType, lc)
		hcm := httpManager(in, "", directConfig(in, local))
		// The application learns the caller's SPIFFE ID from XFCC URI=.
		hcm.ForwardClientCertDetails = hcmv3.HttpConnectionManager_SANITIZE_SET
		hcm.SetCurrentClientCertDetails = &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true}
		ts := downstreamTLS(commonTLS(b.secrets, own, b.bundle, sanMatchers(b.bundle+"/", sc.AllowedSPIFFEIDs), downstreamALPN), true)
		b.add(resource.ListenerType, listener(in, "0.0.0.0", sc.InboundPort, hcm, ts))
		// Outbound: plain HTTP on loopback, mTLS to the service.
		for _, o := range sc.Outbound {
			name := fmt.Sprintf("outbound_%s_%d", o.Service, o.Port)
			b.upstream([]string{o.Service}, own)
			b.add(resource.ListenerType, listener(name, "127.0.0.1", o.Port, httpManager(name, "", directConfig(name, o.Service)), nil))
		}
	}
}

// grpc builds what grpc-go needs for xds:///<name>: an api_listener whose
// HCM uses RDS over ADS and ends with the router, a route config, EDS
// clusters with ROUND_ROBIN and load assignments.
//
// grpc-go NACKs SDS-based TLS: it takes certificates from certificate
// provider instances declared in its bootstrap. On a plain grpc node these
// clusters carry no transport socket (its traffic is plaintext unless the
// application sets its own credentials). On an agent node, whose agent
// writes each identity's files, a cluster of a service with an identity
// carries an UpstreamTlsContext naming the provider instance of the
// node's own identity and checking the peer's SPIFFE ID; see grpcServers
// for the other end.
func (b *builder) grpc() {
	own := ""
	if b.n.Agent {
		own = b.grpcOwn()
		b.grpcServers()
	}
	for _, g := range b.m.GRPC {
		rdsName := g.Route
		var r *Route
		if rdsName == "" {
			rdsName = g.Name
			r = &Route{Name: g.Name, Domains: []string{"*"}, Rules: []Rule{{Match: Match{Prefix: "/"}, Service: g.Name}}}
		} else {
			r = b.routes[g.Route]
		}
		b.add(resource.RouteType, routeConfig(rdsName, r, routeOpts{grpc: true}))
		// Clusters of weight-0 targets stay: a client that has not yet
		// seen the new route still uses them, and grpc-go fails calls to a
		// cluster the server removed. It unsubscribes once the route drops
		// them, so they cost nothing.
		for _, name := range routeTargets(r, false) {
			s := b.services[name]
			var ts *corev3.TransportSocket
			if b.n.Agent && s.Identity != "" {
				if own == "" {
					b.errs = append(b.errs, fmt.Errorf("%w: service %q is reached over mTLS from grpc agent nodes, but this node holds no identity to present; assign it one", ErrMissingIdentity, name))
					continue
				}
				ts = upstreamTLS(grpcTLS(own, b.identityID(s.Identity)))
			}
			c, eds := cluster(s, ts, false)
			if !eds {
				b.errs = append(b.errs, fmt.Errorf("service %q: grpc nodes need IP endpoints", name))
				continue
			}
			b.add(resource.ClusterType, c)
			b.add(resource.EndpointType, loadAssignment(s))
		}
		b.add(resource.ListenerType, &listenerv3.Listener{
			Name:        g.Name,
			ApiListener: &listenerv3.ApiListener{ApiListener: mustAny(httpManager(g.Name, rdsName, nil))},
		})
	}
}

// grpcOwn is the identity a grpc agent node presents as a client: the
// first it holds in name order ("" when it holds none).
func (b *builder) grpcOwn() string {
	names := slices.Sorted(maps.Keys(b.held))
	if len(names) == 0 {
		return ""
	}
	return names[0]
}

// grpcServers gives a grpc agent node a server listener (what
// xds.NewGRPCServer asks for, named by GRPCServerListenerName) for each IP
// endpoint of each service whose identity it holds: mTLS with that
// identity's certificate, client certificates required and verified
// against the trust bundle, and RPCs let through to the server's own
// handlers only from callers its grpc_servers entry allows (by default
// any ID of the trust domain). grpc-go refuses SAN matchers on the server
// side, so callers are checked by an RBAC filter on the URI SAN.
func (b *builder) grpcServers() {
	allowed := map[string][]SPIFFEMatch{}
	for _, g := range b.m.GRPCServers {
		allowed[g.Service] = g.AllowedSPIFFEIDs
	}
	for _, s := range b.m.Services {
		if s.Identity == "" {
			continue
		}
		if _, ok := b.held[s.Identity]; !ok {
			continue
		}
		for _, e := range s.Endpoints {
			if !netIP(e.Address) {
				continue // a server listens on an address, not a name
			}
			name := GRPCServerListenerName(net.JoinHostPort(e.Address, strconv.Itoa(e.Port)))
			hcm := httpManager("grpc_server", "", serverRoutes(name))
			hcm.HttpFilters = append([]*hcmv3.HttpFilter{allowCallers(b.bundle+"/", allowed[s.Name])}, hcm.HttpFilters...)
			ts := downstreamTLS(grpcTLS(s.Identity, ""), true)
			b.add(resource.ListenerType, listener(name, e.Address, e.Port, hcm, ts))
		}
	}
}

func typeName(typeURL string) string {
	switch typeURL {
	case resource.ListenerType:
		return "listener"
	case resource.RouteType:
		return "route"
	case resource.ClusterType:
		return "cluster"
	case resource.EndpointType:
		return "endpoint"
	}
	return typeURL
}
