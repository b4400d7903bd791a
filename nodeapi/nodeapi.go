// Package nodeapi is the node join service on meshca's xDS port: the
// messages, the methods and the JSON codec shared by the server (xds) and
// its clients, `meshca bootstrap` and `meshca agent`. It is plain gRPC with
// JSON bodies, so it needs no generated code. It is public because it is
// the contract between meshca and the nodes: xds's Joiner returns its
// JoinResponse.
package nodeapi

import (
	"bytes"
	"encoding/json"
	"time"
)

// Service and method names.
const (
	Service     = "meshca.node.v1.Nodes"
	JoinMethod  = "Join"
	RenewMethod = "Renew"
	// SignMethod signs an agent node's CSR for one of its identities.
	SignMethod = "SignCSR"
	// FullJoinMethod is the gRPC path of Join.
	FullJoinMethod = "/" + Service + "/" + JoinMethod
	// FullRenewMethod is the gRPC path of Renew.
	FullRenewMethod = "/" + Service + "/" + RenewMethod
	// FullSignMethod is the gRPC path of SignCSR.
	FullSignMethod = "/" + Service + "/" + SignMethod
)

// Node kinds, as JoinResponse.Kind carries them and the registry stores
// them (mesh.KindSidecar... are these). They are defined here, the
// contract both sides share, so that the node commands need not link mesh.
const (
	KindSidecar    = "sidecar"
	KindFrontProxy = "front-proxy"
	KindGRPC       = "grpc"
)

// AgentSDSCluster is the cluster an agent node's envoy.yaml declares for
// its node agent's SDS socket (a pipe address, HTTP/2), and the one the TLS
// contexts meshca sends an agent node take their secrets from.
const AgentSDSCluster = "meshca_agent_sds"

// GRPCServerListenerTemplate is the server_listener_resource_name_template
// of the grpc bootstrap: grpc-go replaces %s with the address a server
// listens on ("10.0.0.5:50051", "[::1]:50051") and asks meshca for that
// listener.
const GRPCServerListenerTemplate = "grpc/server?xds.resource.listening_address=%s"

// ReplicasHeader is the request metadata key by which a client asks for
// JoinResponse.Replicas (value "1"). A server answers with the field only
// when asked, because a client that predates it refuses unknown fields;
// a server that predates it ignores the header and leaves the field out.
const ReplicasHeader = "meshca-replicas"

// RenewRequest asks for a new node certificate. The caller authenticates
// with its current node certificate; only the CSR's public key is used.
type RenewRequest struct {
	CSRPEM string `json:"csr_pem"`
}

// NodeFile is written next to a node's certificate by meshca bootstrap, so
// that meshca bootstrap renew knows where and who it is.
type NodeFile struct {
	Server      string `json:"server"`
	Node        string `json:"node"`
	Kind        string `json:"kind"`
	TrustDomain string `json:"trust_domain"`
	// Servers are every meshca replica the node may use, Server first; the
	// bootstrap lists them all. Empty in files written before replicas.
	Servers []string `json:"servers,omitempty"`
	// EnvoyAdminPort is the admin port written into envoy.yaml, so that a
	// renewal that rewrites it keeps it (0: not recorded).
	EnvoyAdminPort uint32 `json:"envoy_admin_port,omitempty"`
	// AgentSDS is the node agent's SDS socket that envoy.yaml names
	// (meshca agent --sds-socket, meshca bootstrap --agent-sds); empty for
	// a node without an agent.
	AgentSDS string `json:"agent_sds,omitempty"`
	// AgentFiles is, for a proxyless gRPC agent node, the directory its
	// agent writes each identity's files to (meshca agent
	// --write-files): grpc-bootstrap.json declares a certificate provider
	// for each identity found there. Empty for other nodes.
	AgentFiles string `json:"agent_files,omitempty"`
}

// JoinRequest exchanges a one-time join token for a node certificate. Only
// the CSR's public key is used.
type JoinRequest struct {
	Node   string `json:"node"`
	Token  string `json:"token"`
	CSRPEM string `json:"csr_pem"`
}

// JoinResponse carries the node certificate and what the node needs to
// write its bootstrap. Renew answers with it too.
type JoinResponse struct {
	Node        string `json:"node"`
	Kind        string `json:"kind"`
	TrustDomain string `json:"trust_domain"`
	ChainPEM    string `json:"chain_pem"`
	BundlePEM   string `json:"bundle_pem"`
	// IssuersPEM are the CAs that may sign meshca's server certificate
	// until the next renewal; the node pins them (IssuersFile).
	IssuersPEM string    `json:"issuers_pem,omitempty"`
	Serial     string    `json:"serial"`
	NotAfter   time.Time `json:"not_after"`
	// Replicas are the xDS addresses of every meshca replica serving this
	// mesh, as each registered it; only when the request carried
	// ReplicasHeader, and absent from older servers.
	Replicas []string `json:"replicas,omitempty"`
}

// Codec is gRPC's codec for these messages: JSON, content-subtype
// "meshca-json".
type Codec struct{}

// Name is the gRPC content-subtype.
func (Codec) Name() string { return "meshca-json" }

// Marshal encodes v as JSON.
func (Codec) Marshal(v any) ([]byte, error) { return json.Marshal(v) }

// Unmarshal decodes JSON into v. Unknown fields are refused, as on the
// admin API: a field meshca does not read (a validity, say) must not look
// accepted.
func (Codec) Unmarshal(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
