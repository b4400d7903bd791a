// Package bootstrap renders the files a node writes when it joins meshca:
// envoy.yaml for Envoy sidecars and front proxies, the two file-based SDS
// files Envoy watches for its own certificate and the trust bundle, and
// grpc-bootstrap.json for proxyless gRPC nodes.
//
// The xDS connection's own certificate cannot arrive over that connection,
// so Envoy reads it from files through path_config_source SDS with a
// watched_directory: replacing the files (atomically, by rename) rotates
// the certificate without restarting Envoy. grpc-go reads the same files
// through its tls channel credentials and file_watcher certificate provider.
// On an agent grpc node it also reads each identity's files that the node
// agent writes (internal/agentfiles), through one file_watcher instance per
// identity that the resources meshca sends the node name.
//
// Caveats: the output depends only on Params; no file is read or written
// here. Nothing here parses YAML or links Envoy's config protos, so that
// the node agent's binary stays small: the package envoycheck parses the
// output with Envoy's protos and validates it deep (into every
// typed_config). The tests prove with it that every Params the renderers
// accept gives files Envoy accepts (FuzzEnvoyBootstrap), and meshca's full
// command line runs it again before writing envoy.yaml.
package bootstrap

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path"
	"slices"
	"strconv"
	"strings"
	"text/template"
	"unicode"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/nodeapi"
)

// File names inside Params.Dir.
const (
	CertFile      = "node.pem"            // node certificate chain, leaf first
	KeyFile       = "node-key.pem"        // node private key
	BundleFile    = "bundle.pem"          // trust bundle
	IssuersFile   = "meshca-issuers.pem"  // meshca's issuing CAs: what renewals pin meshca by
	CertSDSFile   = "node-sds.yaml"       // SDS file naming CertFile and KeyFile
	BundleSDSFile = "bundle-sds.yaml"     // SDS file naming IssuersFile: what Envoy verifies meshca with
	EnvoyFile     = "envoy.yaml"          // Envoy bootstrap
	GRPCFile      = "grpc-bootstrap.json" // grpc-go xDS bootstrap
)

// Names of the secrets in the SDS files, as referenced from envoy.yaml.
const (
	NodeSecretName   = "meshca-node"
	BundleSecretName = "meshca-bundle"
)

// DefaultAdminPort is Envoy's admin port when Params.AdminPort is 0.
const DefaultAdminPort = 9901

// ClusterName is the static cluster that reaches meshca: xDS, SDS and
// the access-log and metrics sinks all use it.
const ClusterName = "meshca_xds"

// ErrInvalidParams wraps every Params error.
var ErrInvalidParams = errors.New("invalid bootstrap parameters")

// Params describe one node.
type Params struct {
	Node        string // node id, e.g. "edge-1"
	Cluster     string // node.cluster (e.g. the node kind or its service); default Node
	TrustDomain string // e.g. "mesh.local"
	Server      string // meshca xDS address host:port, e.g. "meshca.internal:6565"
	Dir         string // absolute directory holding the files; paths in the output are absolute
	AdminPort   uint32 // Envoy admin port on 127.0.0.1; default 9901

	// Replicas are the xDS addresses (host:port) of meshca's other
	// replicas: the bootstrap lists Server first, then each of these once,
	// so that the node reconnects to another replica when one goes away.
	Replicas []string

	// AgentFiles is, for a proxyless gRPC agent node, the absolute
	// directory where its node agent writes each identity's files
	// (agentfiles.Paths), and Identities the identities it holds: GRPC
	// declares a certificate provider instance for each. Empty for other
	// nodes.
	AgentFiles string
	Identities []string
	// AgentSDS, when set, is the absolute path of the node agent's SDS
	// socket (meshca agent --sds-socket): envoy.yaml then declares the
	// static cluster nodeapi.AgentSDSCluster on that pipe, which the TLS
	// contexts meshca sends an agent node take their secrets from.
	AgentSDS string
}

// MaxReplicas bounds Params.Replicas.
const MaxReplicas = 32

// endpoint is one meshca replica's xDS address.
type endpoint struct {
	Host    string
	Port    uint32
	Address string // host:port
}

// resolved is Params checked, defaulted and expanded for the templates.
type resolved struct {
	Node, Cluster                    string
	Servers                          []endpoint // Server first
	Dir                              string
	CertPath, KeyPath, BundlePath    string
	IssuersPath                      string
	CertSDSPath, BundleSDSPath       string
	AdminPort                        uint32
	ServerID                         string // SPIFFE ID meshca's serving certificate must carry
	NodeSecretName, BundleSecretName string
	XDSCluster                       string
	AgentFiles                       string
	Identities                       []string
	AgentSDS, AgentSDSCluster        string
}

// CheckServer reports whether addr is usable as Params.Server or one of
// Params.Replicas: host:port with a port in 1-65535.
func CheckServer(addr string) error {
	_, err := parseEndpoint(addr)
	return err
}

func parseEndpoint(a string) (endpoint, error) {
	host, portStr, err := net.SplitHostPort(a)
	if err != nil {
		return endpoint{}, fmt.Errorf("%q is not host:port: %v", a, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if host == "" || err != nil || port == 0 {
		return endpoint{}, fmt.Errorf("%q is not host:port with a port in 1-65535", a)
	}
	return endpoint{Host: host, Port: uint32(port), Address: a}, nil
}

func (p Params) resolve() (resolved, error) {
	bad := func(field, format string, args ...any) (resolved, error) {
		return resolved{}, fmt.Errorf("%w: %s %s", ErrInvalidParams, field, fmt.Sprintf(format, args...))
	}
	// The files are JSON-quoted, which would turn invalid UTF-8 into
	// U+FFFD (Envoy would read another name or path than the one given),
	// escapes C0 controls but leaves DEL, C1 controls and other
	// unprintable characters raw, which YAML does not allow.
	texts := []struct{ field, value string }{
		{"Node", p.Node}, {"Cluster", p.Cluster}, {"Server", p.Server}, {"Dir", p.Dir},
		{"AgentSDS", p.AgentSDS}, {"AgentFiles", p.AgentFiles},
	}
	for i, r := range p.Replicas {
		texts = append(texts, struct{ field, value string }{fmt.Sprintf("Replicas[%d]", i), r})
	}
	for _, t := range texts {
		if !utf8.ValidString(t.value) {
			return bad(t.field, "%q is not valid UTF-8", t.value)
		}
		if i := strings.IndexFunc(t.value, func(r rune) bool { return r >= 0x7f && !unicode.IsGraphic(r) }); i >= 0 {
			r, _ := utf8.DecodeRuneInString(t.value[i:])
			return bad(t.field, "%q holds the unprintable character %U", t.value, r)
		}
	}
	if p.Node == "" {
		return bad("Node", "is empty")
	}
	cluster := p.Cluster
	if cluster == "" {
		cluster = p.Node
	}
	if p.TrustDomain == "" {
		return bad("TrustDomain", "is empty")
	}
	td, err := spiffeid.TrustDomainFromString(p.TrustDomain)
	if err != nil {
		return bad("TrustDomain", "%q is not a SPIFFE trust domain: %v", p.TrustDomain, err)
	}
	serverID, err := spiffeid.FromSegments(td, "meshca")
	if err != nil {
		return bad("TrustDomain", "%q: %v", p.TrustDomain, err)
	}
	if p.Server == "" {
		return bad("Server", "is empty (want host:port)")
	}
	first, err := parseEndpoint(p.Server)
	if err != nil {
		return bad("Server", "%v", err)
	}
	servers := []endpoint{first}
	if len(p.Replicas) > MaxReplicas {
		return bad("Replicas", "has %d addresses, more than %d", len(p.Replicas), MaxReplicas)
	}
	for i, a := range p.Replicas {
		e, err := parseEndpoint(a)
		if err != nil {
			return bad(fmt.Sprintf("Replicas[%d]", i), "%v", err)
		}
		if !slices.Contains(servers, e) {
			servers = append(servers, e)
		}
	}
	if p.AgentSDS != "" && (!path.IsAbs(p.AgentSDS) || path.Clean(p.AgentSDS) != p.AgentSDS) {
		return bad("AgentSDS", "%q is not a clean absolute path", p.AgentSDS)
	}
	if p.Dir == "" {
		return bad("Dir", "is empty")
	}
	if !path.IsAbs(p.Dir) {
		return bad("Dir", "%q is not an absolute path", p.Dir)
	}
	dir := path.Clean(p.Dir)
	admin := p.AdminPort
	if admin == 0 {
		admin = DefaultAdminPort
	}
	if admin > 65535 {
		return bad("AdminPort", "%d is not a port (1-65535)", admin)
	}
	agentFiles := ""
	if p.AgentFiles != "" {
		if !path.IsAbs(p.AgentFiles) {
			return bad("AgentFiles", "%q is not an absolute path", p.AgentFiles)
		}
		agentFiles = path.Clean(p.AgentFiles)
	} else if len(p.Identities) > 0 {
		return bad("Identities", "are given without AgentFiles, the directory the node agent writes their files to")
	}
	for i, name := range p.Identities {
		if err := agentfiles.CheckIdentity(name); err != nil {
			return bad(fmt.Sprintf("Identities[%d]", i), "%q is not an identity name", name)
		}
	}
	return resolved{
		Node: p.Node, Cluster: cluster,
		Servers:     servers,
		Dir:         dir,
		CertPath:    path.Join(dir, CertFile),
		KeyPath:     path.Join(dir, KeyFile),
		BundlePath:  path.Join(dir, BundleFile),
		IssuersPath: path.Join(dir, IssuersFile),
		CertSDSPath: path.Join(dir, CertSDSFile), BundleSDSPath: path.Join(dir, BundleSDSFile),
		AdminPort:      admin,
		ServerID:       serverID.String(),
		NodeSecretName: NodeSecretName, BundleSecretName: BundleSecretName,
		XDSCluster: ClusterName,
		AgentFiles: agentFiles, Identities: slices.Clone(p.Identities),
		AgentSDS: p.AgentSDS, AgentSDSCluster: nodeapi.AgentSDSCluster,
	}, nil
}

// Envoy returns envoy.yaml for sidecar and front-proxy nodes: node identity,
// admin on 127.0.0.1, LDS and CDS over ADS, and a static meshca_xds cluster
// speaking HTTP/2 over TLS 1.3 with the node certificate and bundle read
// through file-based SDS. The output is not validated here: see
// envoycheck.ParseEnvoy.
//
// The cluster lists Server and every replica as endpoints of one STRICT_DNS
// cluster (round robin): when the ADS stream breaks, Envoy opens the next
// one through the cluster's load balancer, so a replica that went away is
// left for the next endpoint, and Envoy subscribes again there.
func Envoy(p Params) ([]byte, error) {
	r, err := p.resolve()
	if err != nil {
		return nil, err
	}
	return render(envoyTmpl, r)
}

// CertSDS returns node-sds.yaml: the NodeSecretName secret pointing at
// CertFile and KeyFile.
func CertSDS(p Params) ([]byte, error) {
	r, err := p.resolve()
	if err != nil {
		return nil, err
	}
	return render(certSDSTmpl, r)
}

// BundleSDS returns bundle-sds.yaml: the BundleSecretName secret pointing at
// IssuersFile. Envoy verifies meshca's xDS server with it: meshca's issuing
// CAs, not the roots, which an organisation may share with other CAs (Envoy
// sets X509_V_FLAG_PARTIAL_CHAIN, so an intermediate is a trust anchor).
func BundleSDS(p Params) ([]byte, error) {
	r, err := p.resolve()
	if err != nil {
		return nil, err
	}
	return render(bundleSDSTmpl, r)
}

func render(t *template.Template, r resolved) ([]byte, error) {
	var buf bytes.Buffer
	if err := t.Execute(&buf, r); err != nil {
		return nil, fmt.Errorf("render %s: %w", t.Name(), err)
	}
	return buf.Bytes(), nil
}

// quote renders a string as a JSON string, which is also a valid YAML
// double-quoted scalar: no Params value can break the document's structure.
func quote(s string) (string, error) {
	b, err := json.Marshal(s)
	return string(b), err
}

var funcs = template.FuncMap{"q": quote}

var envoyTmpl = template.Must(template.New(EnvoyFile).Funcs(funcs).Parse(`# Envoy bootstrap written by meshca. Listeners and clusters arrive over ADS;
# the node certificate and trust bundle are read from files through SDS.
node:
  id: {{q .Node}}
  cluster: {{q .Cluster}}
admin:
  address:
    socket_address: {address: 127.0.0.1, port_value: {{.AdminPort}}}
dynamic_resources:
  ads_config:
    api_type: GRPC
    transport_api_version: V3
    set_node_on_first_message_only: true
    grpc_services:
    - envoy_grpc: {cluster_name: {{.XDSCluster}}}
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
# Stats go to meshca's metrics service (re-exposed at its /metrics with a
# node label), over the same mTLS connection as xDS.
stats_flush_interval: 10s
stats_sinks:
- name: envoy.stat_sinks.metrics_service
  typed_config:
    "@type": type.googleapis.com/envoy.config.metrics.v3.MetricsServiceConfig
    transport_api_version: V3
    emit_tags_as_labels: true
    grpc_service:
      envoy_grpc: {cluster_name: {{.XDSCluster}}}
static_resources:
  clusters:
  - name: {{.XDSCluster}}
    type: STRICT_DNS
    connect_timeout: 5s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options:
            connection_keepalive: {interval: 30s, timeout: 10s}
    load_assignment:
      cluster_name: {{.XDSCluster}}
      endpoints:
      - lb_endpoints:
{{- range .Servers}}
        - endpoint:
            address:
              socket_address: {address: {{q .Host}}, port_value: {{.Port}}}
{{- end}}
    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        common_tls_context:
          tls_params: {tls_minimum_protocol_version: TLSv1_3}
          tls_certificate_sds_secret_configs:
          - name: {{q .NodeSecretName}}
            sds_config:
              path_config_source:
                path: {{q .CertSDSPath}}
                watched_directory: {path: {{q .Dir}}}
              resource_api_version: V3
          combined_validation_context:
            default_validation_context:
              match_typed_subject_alt_names:
              - san_type: URI
                matcher: {exact: {{q .ServerID}}}
            validation_context_sds_secret_config:
              name: {{q .BundleSecretName}}
              sds_config:
                path_config_source:
                  path: {{q .BundleSDSPath}}
                  watched_directory: {path: {{q .Dir}}}
                resource_api_version: V3
{{- if .AgentSDS}}
  # The node agent serves this node's certificates and the trust bundle
  # over SDS on a local socket; its keys never leave the node.
  - name: {{.AgentSDSCluster}}
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config:
          http2_protocol_options: {}
    load_assignment:
      cluster_name: {{.AgentSDSCluster}}
      endpoints:
      - lb_endpoints:
        - endpoint:
            address:
              pipe: {path: {{q .AgentSDS}}}
{{- end}}
`))

var certSDSTmpl = template.Must(template.New(CertSDSFile).Funcs(funcs).Parse(`# File-based SDS written by meshca: the node certificate and key.
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: {{q .NodeSecretName}}
  tls_certificate:
    certificate_chain: {filename: {{q .CertPath}}}
    private_key: {filename: {{q .KeyPath}}}
`))

var bundleSDSTmpl = template.Must(template.New(BundleSDSFile).Funcs(funcs).Parse(`# File-based SDS written by meshca: the CAs that sign meshca's server certificate.
resources:
- "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
  name: {{q .BundleSecretName}}
  validation_context:
    trusted_ca: {filename: {{q .IssuersPath}}}
`))
