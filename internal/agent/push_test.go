package agent_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// pushBound is how soon a change at meshca must reach the agent without
// any poll: generous, the machine is shared.
const pushBound = 2 * time.Second

// TestAgentLearnsAssignmentsAtOnce: with the agent's identity poll an hour
// away and the fake clock never moved, an identity assigned at meshca's
// admin API is served on the agent's SDS socket, a selector change, an
// unassignment and an identity revocation reach the agent, each within
// 2 s of real time: meshca pushes them on the identity watch.
func TestAgentLearnsAssignmentsAtOnce(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	for _, id := range []string{"web", "api", "db"} {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id}, nil, http.StatusCreated)
	}
	cert := m.addAgentNode("agent-1", "web")
	socket := filepath.Join(t.TempDir(), "sds.sock")
	a := startAgent(t, agent.Config{Conn: m.dial(m.app.XDS, cert), Node: "agent-1", TrustDomain: td, SDSSocket: socket,
		IdentityPoll: time.Hour, WatchedPoll: time.Hour, Clock: clk, Logger: testkit.Logger(t)})
	waitState(t, a, "web and the bundle", func(s agent.State) bool { _, ok := s.SVID("web"); return ok && s.BundlePEM != nil })
	stream := openSotW(t, sdsClient(t, socket))
	stream.until("web and the bundle", func(s map[string]*tlsv3.Secret) bool { return s[idName("web")] != nil && s[bundleName] != nil })
	frozen := clk.Now()

	// within runs change at meshca and waits, in real time, until the
	// agent shows it.
	var figures []string
	within := func(what string, change func(), shows func() bool) {
		t.Helper()
		start := time.Now()
		change()
		shows()
		took := time.Since(start)
		figures = append(figures, fmt.Sprintf("%s %s", what, took.Round(time.Millisecond)))
		if took > pushBound {
			t.Fatalf("%s took %s, more than %s", what, took, pushBound)
		}
	}
	within("assign to served on SDS", func() {
		m.admin("POST", api.PathNodes+"/agent-1/identities", api.AssignRequest{Identity: "api"}, nil, http.StatusOK)
	}, func() bool {
		stream.until("api's certificate", func(s map[string]*tlsv3.Secret) bool { return s[idName("api")] != nil })
		return true
	})
	uid := fmt.Sprintf("uid:%d", os.Getuid()+1)
	within("selector change", func() {
		m.admin("POST", api.PathNodes+"/agent-1/identities", api.AssignRequest{Identity: "api", Selectors: []string{uid}}, nil, http.StatusOK)
	}, func() bool {
		waitState(t, a, "api for "+uid+" only", func(s agent.State) bool {
			v, ok := s.SVID("api")
			return ok && slices.Equal(v.Selectors, []string{uid})
		})
		return true
	})
	within("unassign to dropped", func() {
		m.admin("DELETE", api.PathNodes+"/agent-1/identities/web", nil, nil, http.StatusOK)
	}, func() bool {
		waitState(t, a, "web dropped", func(s agent.State) bool { _, ok := s.SVID("web"); return !ok })
		return true
	})
	m.admin("POST", api.PathNodes+"/agent-1/identities", api.AssignRequest{Identity: "db"}, nil, http.StatusOK)
	waitState(t, a, "db", func(s agent.State) bool { _, ok := s.SVID("db"); return ok })
	within("identity revoke to dropped", func() {
		m.admin("POST", api.PathRevoke+"/db", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	}, func() bool {
		waitState(t, a, "db dropped", func(s agent.State) bool { _, ok := s.SVID("db"); return !ok })
		return true
	})

	// The socket no longer serves what the node lost.
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	for _, id := range []string{"web", "db"} {
		resp, err := sdsClient(t, socket).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{idName(id)}})
		if err == nil && len(resp.GetResources()) > 0 {
			t.Fatalf("the socket still serves %s after the node lost it", id)
		}
	}
	if !clk.Now().Equal(frozen) {
		t.Fatal("the fake clock moved: the test proves nothing about the poll")
	}
	t.Logf("pushed to the agent, no poll (identity poll 1h, fake clock still): %v", figures)
}

// TestIdentityWatchBounds: the identity watch as an outsider holding a
// node certificate sees it: a node without an agent is refused, and one
// node cannot hold more than a few watches open.
func TestIdentityWatchBounds(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "web"}, nil, http.StatusCreated)
	var tok api.JoinToken
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: "plain", Kind: "sidecar", Identities: []string{"web"}}, &tok, http.StatusCreated)
	plain := m.dial(m.app.XDS, m.join("plain", tok.Token))
	agentConn := m.dial(m.app.XDS, m.addAgentNode("agent-1", "web"))

	open := func(conn *grpc.ClientConn) (nodeapi.IdentitiesResponse, error) {
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		desc := &grpc.StreamDesc{StreamName: nodeapi.WatchIdentitiesMethod, ServerStreams: true}
		s, err := conn.NewStream(ctx, desc, nodeapi.FullWatchIdentitiesMethod, grpc.ForceCodec(nodeapi.Codec{}))
		if err != nil {
			return nodeapi.IdentitiesResponse{}, err
		}
		if err := s.SendMsg(&nodeapi.IdentitiesRequest{}); err != nil {
			return nodeapi.IdentitiesResponse{}, err
		}
		if err := s.CloseSend(); err != nil {
			return nodeapi.IdentitiesResponse{}, err
		}
		var resp nodeapi.IdentitiesResponse
		err = s.RecvMsg(&resp)
		return resp, err
	}
	if _, err := open(plain); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("watch of a node without an agent: %v, want PermissionDenied", err)
	}
	opened := 0
	for ; opened < 10; opened++ {
		resp, err := open(agentConn)
		if status.Code(err) == codes.ResourceExhausted {
			break
		}
		if err != nil {
			t.Fatalf("watch %d: %v", opened+1, err)
		}
		if len(resp.Identities) != 1 || resp.Identities[0].Name != "web" || resp.IssuerSerial != "" {
			t.Fatalf("watch %d answered %+v, want web without an issuer (not asked)", opened+1, resp)
		}
	}
	t.Logf("identity watches one node may hold open: %d, the next refused", opened)
	if opened == 0 || opened >= 10 {
		t.Fatalf("%d watches open; want a small bound", opened)
	}
}
