package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/mesh"
	"github.com/meshca/meshca/nodeapi"
)

// TestAgentNodeConfigAndIdentities: meshca's listeners for an agent node
// take every secret from the agent's local cluster, received over a real
// ADS stream; Identities answers agent nodes only; an identity revoked at
// meshca leaves the agent's socket.
func TestAgentNodeConfigAndIdentities(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	for _, id := range []string{"front", "echo", "billing", "ops", "web"} {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id}, nil, http.StatusCreated)
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "testdata", "mesh", "examples", "https-front-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: string(doc)}, nil, http.StatusCreated)
	cert := m.addAgentNode("echo-1", "echo", "web")
	conn := m.dial(m.app.XDS, cert)

	// The listeners meshca sends the agent node, over ADS.
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	ads, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ads.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "echo-1"}, TypeUrl: resource.ListenerType}); err != nil {
		t.Fatal(err)
	}
	resp, err := ads.Recv()
	if err != nil {
		t.Fatalf("LDS: %v", err)
	}
	if len(resp.GetResources()) == 0 {
		t.Fatal("no listeners for the agent node")
	}
	text, err := protojson.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	sources := strings.Count(string(text), `"sdsConfig":`)
	local := strings.Count(string(text), `"clusterName":"`+mesh.AgentSDSCluster+`"`)
	if sources == 0 || local != sources {
		t.Fatalf("%d SDS config sources in the agent node's listeners, %d of them %s", sources, local, mesh.AgentSDSCluster)
	}
	t.Logf("agent node's listeners: %d SDS config sources, all %s", sources, mesh.AgentSDSCluster)

	// Identities: the agent node's own, sorted; refused to a plain node.
	call := func(c grpc.ClientConnInterface) (nodeapi.IdentitiesResponse, error) {
		var r nodeapi.IdentitiesResponse
		err := c.Invoke(ctx, nodeapi.FullIdentitiesMethod, &nodeapi.IdentitiesRequest{}, &r, grpc.ForceCodec(nodeapi.Codec{}))
		return r, err
	}
	got, err := call(conn)
	if err != nil || len(got.Identities) != 2 || got.Identities[0].Name != "echo" || got.Identities[1].Name != "web" ||
		got.Identities[0].SPIFFEID != idName("echo") || got.Identities[1].SPIFFEID != idName("web") {
		t.Fatalf("Identities of echo-1: %+v, %v", got, err)
	}
	var tok api.JoinToken
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: "plain-1", Kind: "sidecar", Identities: []string{"web"}}, &tok, http.StatusCreated)
	plain := m.dial(m.app.XDS, m.join("plain-1", tok.Token))
	if _, err := call(plain); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("Identities of a plain node: %v, want PermissionDenied", err)
	}
	if _, err := call(m.dial(m.app.XDS, nil)); err == nil {
		t.Fatal("Identities answered a caller without a node certificate")
	}

	// An identity revoked at meshca leaves the agent and its socket.
	socket := filepath.Join(t.TempDir(), "sds.sock")
	a := startAgent(t, agent.Config{Conn: conn, Node: "echo-1", TrustDomain: td, SDSSocket: socket, Clock: clk})
	waitState(t, a, "echo and web", func(s agent.State) bool { return len(s.SVIDs) == 2 && s.BundlePEM != nil })
	// Selectors set at meshca reach the agent's state at its next poll,
	// for the Workload API to match callers by; the certificate stays.
	mine := fmt.Sprintf("uid:%d", os.Getuid())
	before, _ := a.State()
	echo, _ := before.SVID("echo")
	m.admin("POST", api.PathNodes+"/echo-1/identities", api.AssignRequest{Identity: "echo", Selectors: []string{mine}}, nil, http.StatusOK)
	clk.Add(agent.DefaultIdentityPoll)
	st := waitState(t, a, "echo's selectors", func(s agent.State) bool {
		v, ok := s.SVID("echo")
		return ok && len(v.Selectors) == 1 && v.Selectors[0] == mine
	})
	if v, _ := st.SVID("echo"); v.Serial != echo.Serial {
		t.Fatal("a change of selectors made a new certificate")
	}
	if v, _ := st.SVID("web"); len(v.Selectors) != 0 {
		t.Fatalf("web has selectors %v, assigned none", v.Selectors)
	}
	stream := openSotW(t, sdsClient(t, socket))
	stream.until("echo and web", func(m map[string]*tlsv3.Secret) bool { return m[idName("web")] != nil && m[idName("echo")] != nil })
	start := time.Now()
	m.admin("POST", api.PathRevoke+"/web", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	stream.until("web gone from the socket", func(m map[string]*tlsv3.Secret) bool { return m[idName("web")] == nil && m[idName("echo")] != nil })
	t.Logf("identity revoke to the identity gone from the agent's SDS socket: %s", time.Since(start).Round(time.Millisecond))
}
