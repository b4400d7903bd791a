package mesh_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshca/meshca/mesh"
)

const grpcAgentMesh = `version: 1
services:
  - name: greeter
    identity: greeter
    protocol: http2
    endpoints:
      - {address: 127.0.0.1, port: 50051}
      - {address: "::1", port: 50052}
  - name: plain
    protocol: http2
    endpoints:
      - {address: 127.0.0.1, port: 50060}
grpc:
  - name: greeter
  - name: plain
`

// TestGRPCAgentNodes: on an agent node, clusters of services with an
// identity carry mTLS on provider instances and check the service's
// SPIFFE ID; services without one stay plaintext; server listeners exist
// for every IP endpoint of services whose identity the node holds, and
// only those; an agent node holding no identity cannot reach mTLS
// services, and says so.
func TestGRPCAgentNodes(t *testing.T) {
	m := parse(t, []byte(grpcAgentMesh))

	client := build(t, m, grpcAgentNode("web-1", "web"))
	for _, r := range client.ByType[resource.ClusterType] {
		c := r.(*clusterv3.Cluster)
		ts := c.GetTransportSocket()
		if c.GetName() == "plain" {
			if ts != nil {
				t.Errorf("cluster plain (no identity) has a transport socket")
			}
			continue
		}
		var up tlsv3.UpstreamTlsContext
		if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
			t.Fatalf("cluster %s: %v", c.GetName(), err)
		}
		ctx := up.GetCommonTlsContext()
		vc := ctx.GetValidationContext()
		if ctx.GetTlsCertificateProviderInstance().GetInstanceName() != "meshca-web" ||
			vc.GetCaCertificateProviderInstance().GetInstanceName() != "meshca-web" ||
			len(vc.GetMatchSubjectAltNames()) != 1 || vc.GetMatchSubjectAltNames()[0].GetExact() != "spiffe://mesh.local/greeter" {
			t.Errorf("cluster %s: TLS context %v", c.GetName(), ctx)
		}
	}
	if servers := serverListeners(client); len(servers) != 0 {
		t.Errorf("a node not holding greeter got server listeners %v", servers)
	}

	server := build(t, m, grpcAgentNode("greeter-1", "greeter"))
	want := []string{
		"grpc/server?xds.resource.listening_address=127.0.0.1:50051",
		"grpc/server?xds.resource.listening_address=[::1]:50052",
	}
	if got := serverListeners(server); !slices.Equal(got, want) {
		t.Errorf("server listeners %v, want %v", got, want)
	}

	plainNode := build(t, m, grpcNode)
	if got := serverListeners(plainNode); len(got) != 0 {
		t.Errorf("a plain grpc node got server listeners %v", got)
	}
	for _, r := range plainNode.ByType[resource.ClusterType] {
		if r.(*clusterv3.Cluster).GetTransportSocket() != nil {
			t.Errorf("a plain grpc node's cluster %s has a transport socket", r.(*clusterv3.Cluster).GetName())
		}
	}

	_, err := mesh.Build(m, grpcAgentNode("lonely-1"), td)
	if !errors.Is(err, mesh.ErrMissingIdentity) {
		t.Fatalf("agent node without identity: err = %v, want ErrMissingIdentity", err)
	}
	t.Logf("agent node without identity: %v", err)
}

// serverListeners names res's listeners that have an address and a
// DownstreamTlsContext requiring client certificates.
func serverListeners(res mesh.Resources) []string {
	var out []string
	for _, r := range res.ByType[resource.ListenerType] {
		l := r.(*listenerv3.Listener)
		if l.GetApiListener() != nil {
			continue
		}
		var down tlsv3.DownstreamTlsContext
		if err := l.GetFilterChains()[0].GetTransportSocket().GetTypedConfig().UnmarshalTo(&down); err != nil || !down.GetRequireClientCertificate().GetValue() {
			continue
		}
		out = append(out, l.GetName())
	}
	return out
}

// TestGRPCServersValidation: grpc_servers entries name a service with an
// identity, once, and allowed IDs of the trust domain; each problem is
// reported at its path.
func TestGRPCServersValidation(t *testing.T) {
	doc := grpcAgentMesh + `grpc_servers:
  - service: plain
  - service: greeter
  - service: greeter
    allowed_spiffe_ids: [{exact: spiffe://elsewhere.org/web}]
  - service: missing
`
	_, err := mesh.Parse([]byte(doc), td)
	if !errors.Is(err, mesh.ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	for _, want := range []string{
		"grpc_servers[0].service",
		"grpc_servers[2].service",
		"grpc_servers[2].allowed_spiffe_ids[0].exact",
		"grpc_servers[3].service",
	} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error does not name %s:\n%v", want, err)
		}
	}
	ok := grpcAgentMesh + `grpc_servers:
  - service: greeter
    allowed_spiffe_ids: [{exact: spiffe://mesh.local/web}, {prefix: spiffe://mesh.local/team/}]
`
	m := parse(t, []byte(ok))
	refs := m.IdentityRefs()
	if last := refs[len(refs)-1]; last.Path != "grpc_servers[0].allowed_spiffe_ids[0].exact" || last.Name != "web" {
		t.Errorf("identity refs %v: the allowed caller web is missing", refs)
	}
	build(t, m, grpcAgentNode("greeter-1", "greeter"))
}
