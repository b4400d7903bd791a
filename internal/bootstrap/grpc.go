package bootstrap

import (
	"encoding/json"
	"fmt"

	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/nodeapi"
)

// refreshInterval is how often grpc-go re-reads the certificate files. A
// renewal revokes the previous node certificate at once and ends the
// connections made with it: grpc-go reconnects with the new files within
// this interval (keeping its last configuration meanwhile).
const refreshInterval = "60s"

// agentRefreshInterval is how often grpc-go re-reads the files the node
// agent writes for each identity: three small files a second, so that a
// rotated certificate is in use within a second of the agent writing it.
const agentRefreshInterval = "1s"

// serverListenerTemplate names the LDS resource of an xDS gRPC server.
const serverListenerTemplate = nodeapi.GRPCServerListenerTemplate

// The structs fix the key order of grpc-bootstrap.json.
type grpcBootstrap struct {
	XDSServers                 []grpcServer                   `json:"xds_servers"`
	Node                       grpcNode                       `json:"node"`
	CertificateProviders       map[string]grpcCertificateProv `json:"certificate_providers"`
	ServerListenerNameTemplate string                         `json:"server_listener_resource_name_template"`
}

type grpcServer struct {
	ServerURI      string          `json:"server_uri"`
	ChannelCreds   []grpcChanCreds `json:"channel_creds"`
	ServerFeatures []string        `json:"server_features"`
}

type grpcChanCreds struct {
	Type   string     `json:"type"`
	Config grpcTLSCfg `json:"config"`
}

// grpcTLSCfg is both the tls channel credentials config and the
// file_watcher provider config: they take the same keys.
type grpcTLSCfg struct {
	CertificateFile   string `json:"certificate_file"`
	PrivateKeyFile    string `json:"private_key_file"`
	CACertificateFile string `json:"ca_certificate_file"`
	RefreshInterval   string `json:"refresh_interval"`
}

type grpcNode struct {
	ID       string   `json:"id"`
	Cluster  string   `json:"cluster"`
	Locality struct{} `json:"locality"`
}

type grpcCertificateProv struct {
	PluginName string     `json:"plugin_name"`
	Config     grpcTLSCfg `json:"config"`
}

// GRPC returns grpc-bootstrap.json for proxyless gRPC nodes: the xDS servers
// (Server, then every replica) reached over mTLS with the node's files, and
// a "default" file_watcher certificate provider that xDS-delivered TLS
// contexts refer to.
//
// grpc-go uses the servers in order (gRFC A71 fallback, on by default since
// v1.70): it falls back to the next one when a server cannot be reached
// while it still waits for a resource it has not received, and goes back to
// the first when that returns. A node that already has its resources and
// loses its server keeps them and reconnects to the same server_uri; to move
// such nodes to another replica at once, give --server a DNS name that
// resolves to every replica.
//
// For an agent node (Params.AgentFiles set) it also declares, for each of
// Params.Identities, the file_watcher instance agentfiles.Instance(name)
// on the files the agent writes for it (agentfiles.Paths): the clusters
// and server listeners meshca sends an agent node name these instances.
func GRPC(p Params) ([]byte, error) {
	r, err := p.resolve()
	if err != nil {
		return nil, err
	}
	files := grpcTLSCfg{
		CertificateFile:   r.CertPath,
		PrivateKeyFile:    r.KeyPath,
		CACertificateFile: r.BundlePath,
		RefreshInterval:   refreshInterval,
	}
	// meshca itself is verified against its issuing CAs, not the roots,
	// which an organisation may share with other CAs; mesh peers against
	// the trust bundle.
	xdsFiles := files
	xdsFiles.CACertificateFile = r.IssuersPath
	b := grpcBootstrap{
		Node:                       grpcNode{ID: r.Node, Cluster: r.Cluster},
		CertificateProviders:       map[string]grpcCertificateProv{"default": {PluginName: "file_watcher", Config: files}},
		ServerListenerNameTemplate: serverListenerTemplate,
	}
	for _, name := range r.Identities {
		cert, key, bundle := agentfiles.Paths(r.AgentFiles, name)
		b.CertificateProviders[agentfiles.Instance(name)] = grpcCertificateProv{PluginName: "file_watcher", Config: grpcTLSCfg{
			CertificateFile: cert, PrivateKeyFile: key, CACertificateFile: bundle, RefreshInterval: agentRefreshInterval,
		}}
	}
	for _, e := range r.Servers {
		b.XDSServers = append(b.XDSServers, grpcServer{
			ServerURI:      e.Address,
			ChannelCreds:   []grpcChanCreds{{Type: "tls", Config: xdsFiles}},
			ServerFeatures: []string{"xds_v3"},
		})
	}
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("render %s: %w", GRPCFile, err)
	}
	return append(out, '\n'), nil
}
