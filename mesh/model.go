package mesh

import "github.com/spiffe/go-spiffe/v2/spiffeid"

// Mesh is a parsed mesh document. Parse fills in every default, so the
// values below are explicit and Marshal writes the canonical form.
type Mesh struct {
	// Version of the file format; 1 is the only one. A file must give it
	// (Parse refuses a file without it); Defaults fills in 1 when it is 0.
	Version    int           `yaml:"version"`
	Services   []Service     `yaml:"services"`
	Routes     []Route       `yaml:"routes,omitempty"`
	FrontProxy *FrontProxy   `yaml:"front_proxy,omitempty"`
	Sidecars   []Sidecar     `yaml:"sidecars,omitempty"`
	GRPC       []GRPCService `yaml:"grpc,omitempty"`
	// GRPCServers restricts who may call the xDS gRPC servers of a service
	// on grpc agent nodes (those holding its identity).
	GRPCServers []GRPCServer `yaml:"grpc_servers,omitempty"`
	// AccessLog sends the access logs of every Envoy listener to meshca
	// (meshca logs); proxyless gRPC nodes have none.
	AccessLog bool `yaml:"access_log,omitempty"`

	// parsed is set by Parse to the Mesh itself, with the trust domain it
	// was validated for: Build then uses it as it is. A copy of the struct
	// (which may be changed) points elsewhere, so it is validated again.
	parsed   *Mesh
	parsedTD spiffeid.TrustDomain
}

// Service is a set of endpoints reachable under one name, and the cluster
// named after it.
type Service struct {
	Name string `yaml:"name"`
	// Identity is the identity name (SPIFFE ID spiffe://<td>/<identity>)
	// that the service's sidecar presents. A service with a sidecars entry
	// is reached over mTLS and needs one.
	Identity string `yaml:"identity,omitempty"`
	// Protocol the endpoints speak: http (HTTP/1.1, the default) or http2
	// (needed for gRPC services behind Envoy).
	Protocol  string     `yaml:"protocol"`
	Endpoints []Endpoint `yaml:"endpoints"`
}

// Endpoint is one instance of a service. For a service with a sidecar,
// address and port are those of the sidecar's inbound listener.
type Endpoint struct {
	// Address is an IP address or a host name. A service with a host name
	// endpoint becomes a STRICT_DNS cluster on Envoy nodes and cannot be
	// used by grpc nodes.
	Address  string    `yaml:"address"`
	Port     int       `yaml:"port"`
	Weight   *int      `yaml:"weight"` // 1 to 10000, default 1
	Locality *Locality `yaml:"locality,omitempty"`
}

// Locality places endpoints; EDS groups them by locality.
type Locality struct {
	Region  string `yaml:"region,omitempty"`
	Zone    string `yaml:"zone,omitempty"`
	SubZone string `yaml:"sub_zone,omitempty"`
}

// Route is one virtual host: the domains it answers and its rules, tried
// in order. It becomes a RouteConfiguration named after it.
type Route struct {
	Name    string   `yaml:"name"`
	Domains []string `yaml:"domains"`
	Rules   []Rule   `yaml:"rules"`
	// ResponseHeaders are added to every response (value may use Envoy
	// formatters such as %UPSTREAM_HOST%), overwriting upstream values.
	ResponseHeaders []Header `yaml:"response_headers,omitempty"`
}

// Rule matches requests and sends them to one service or splits them
// between weighted services. Exactly one of Service and Weighted is set.
type Rule struct {
	Match    Match            `yaml:"match"`
	Service  string           `yaml:"service,omitempty"`
	Weighted []WeightedTarget `yaml:"weighted,omitempty"`
	// Timeout of the whole request, a Go duration ("5s"); empty: Envoy's
	// default (15s). grpc nodes get it as max_stream_duration.
	Timeout string   `yaml:"timeout,omitempty"`
	Retries *Retries `yaml:"retries,omitempty"`
}

// Match selects requests by path and headers. Exactly one of Prefix and
// Path is set; the default is prefix "/".
type Match struct {
	Prefix  string        `yaml:"prefix,omitempty"`
	Path    string        `yaml:"path,omitempty"`
	Headers []HeaderMatch `yaml:"headers,omitempty"`
}

// HeaderMatch matches one request header: exactly one of Exact, Prefix
// and Present. Invert negates it.
type HeaderMatch struct {
	Name    string `yaml:"name"`
	Exact   string `yaml:"exact,omitempty"`
	Prefix  string `yaml:"prefix,omitempty"`
	Present bool   `yaml:"present,omitempty"`
	Invert  bool   `yaml:"invert,omitempty"`
}

// WeightedTarget is one service of a split. Weight is required; 0 is
// allowed (no traffic) as long as the route's total is above 0.
type WeightedTarget struct {
	Service string `yaml:"service"`
	Weight  *int   `yaml:"weight"`
}

// Retries of a rule.
type Retries struct {
	NumRetries int `yaml:"num_retries"` // retries after the first try, 1 to 10
	// On lists Envoy retry_on conditions (5xx, gateway-error, reset,
	// connect-failure, refused-stream, retriable-4xx, and the gRPC ones
	// cancelled, deadline-exceeded, internal, resource-exhausted,
	// unavailable). Default: 5xx, connect-failure, unavailable. grpc nodes
	// keep only the gRPC conditions.
	On            []string `yaml:"on"`
	PerTryTimeout string   `yaml:"per_try_timeout,omitempty"`
}

// Header is a response header to add.
type Header struct {
	Name  string `yaml:"name"`
	Value string `yaml:"value"`
}

// FrontProxy configures front-proxy nodes: an HTTPS listener, a plain HTTP
// listener, or both.
type FrontProxy struct {
	// Identity whose certificate the HTTPS listener presents and the proxy
	// uses as client certificate towards mTLS services. A front-proxy node
	// must hold it.
	Identity string         `yaml:"identity,omitempty"`
	HTTPS    *HTTPSListener `yaml:"https,omitempty"`
	HTTP     *HTTPListener  `yaml:"http,omitempty"`
}

// Client certificate modes of the HTTPS listener.
const (
	ClientCertsNone     = "none"
	ClientCertsOptional = "optional"
	ClientCertsRequired = "required"
)

// HTTPSListener terminates TLS with the front identity's certificate.
type HTTPSListener struct {
	Port  int    `yaml:"port"` // default 8443
	Route string `yaml:"route"`
	// ClientCerts: none (default), optional or required. Presented client
	// certificates are checked against the trust bundle and
	// AllowedSPIFFEIDs (empty: any ID of the trust domain).
	ClientCerts      string        `yaml:"client_certs"`
	AllowedSPIFFEIDs []SPIFFEMatch `yaml:"allowed_spiffe_ids,omitempty"`
	// ForwardClientCert sets x-forwarded-client-cert upstream
	// (SANITIZE_SET with the subject, URI SAN and certificate).
	ForwardClientCert bool  `yaml:"forward_client_cert,omitempty"`
	HSTS              *HSTS `yaml:"hsts,omitempty"`
}

// HSTS adds strict-transport-security to every HTTPS response.
type HSTS struct {
	MaxAge            int  `yaml:"max_age"` // seconds, 1 to 63072000
	IncludeSubdomains bool `yaml:"include_subdomains,omitempty"`
	Preload           bool `yaml:"preload,omitempty"`
}

// Redirect codes of the plain HTTP listener.
const (
	RedirectPermanent = "permanent_redirect" // 308
	RedirectMoved     = "moved_permanently"  // 301
)

// HTTPListener is plain HTTP: exactly one of RedirectToHTTPS ("enforce
// HTTPS", keeps the HTTPS port) and Route (serve the route in plain HTTP).
type HTTPListener struct {
	Port            int    `yaml:"port"` // default 8080
	Route           string `yaml:"route,omitempty"`
	RedirectToHTTPS string `yaml:"redirect_to_https,omitempty"`
}

// SPIFFEMatch allows a peer SPIFFE ID: exactly one of Exact and Prefix,
// both inside the mesh trust domain.
type SPIFFEMatch struct {
	Exact  string `yaml:"exact,omitempty"`
	Prefix string `yaml:"prefix,omitempty"`
}

// Sidecar configures the sidecar of a service, on every sidecar node that
// holds the service's identity.
type Sidecar struct {
	Service string `yaml:"service"`
	// InboundPort is the mTLS listener on 0.0.0.0 (default 15443).
	InboundPort int `yaml:"inbound_port"`
	// AppPort is where the application listens on 127.0.0.1.
	AppPort int `yaml:"app_port"`
	// AllowedSPIFFEIDs are the callers let in (empty: any ID of the trust
	// domain).
	AllowedSPIFFEIDs []SPIFFEMatch `yaml:"allowed_spiffe_ids,omitempty"`
	Outbound         []Outbound    `yaml:"outbound,omitempty"`
}

// Outbound is a service the application calls through 127.0.0.1:Port.
type Outbound struct {
	Service string `yaml:"service"`
	Port    int    `yaml:"port"`
}

// GRPCService is what proxyless gRPC nodes dial as xds:///<name>.
type GRPCService struct {
	Name string `yaml:"name"`
	// Route to apply; empty: all calls go to the service called Name.
	Route string `yaml:"route,omitempty"`
}

// GRPCServer sets the callers let in to a service's xDS gRPC servers on
// grpc agent nodes. A service without an entry lets in any ID of the trust
// domain.
type GRPCServer struct {
	// Service is the served service; it must have an identity.
	Service string `yaml:"service"`
	// AllowedSPIFFEIDs are the callers let in (empty: any ID of the trust
	// domain); others get PermissionDenied.
	AllowedSPIFFEIDs []SPIFFEMatch `yaml:"allowed_spiffe_ids,omitempty"`
}
