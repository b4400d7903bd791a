package app_test

import (
	"context"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
)

// TestNodesAfterEmergencyRotation: an emergency rotation replaces the
// issuing CA that node certificates chain to and that nodes verify meshca
// by, root or not: a node joined before it is refused at the handshake,
// and the operator running `ca rotate --emergency` is told that nodes join
// again, with the command.
func TestNodesAfterEmergencyRotation(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	cert := m.joined("n1", "web")
	if _, fails := fetchOwn(t, secretservice.NewSecretDiscoveryServiceClient(m.dial(cert)), "n1", "web", 1); fails > 0 {
		t.FailNow()
	}
	out := m.mustCLI("ca", "rotate", "--emergency")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := secretservice.NewSecretDiscoveryServiceClient(m.dial(cert)).FetchSecrets(ctx,
		&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, ResourceNames: []string{secretName("web")}})
	hint := strings.Contains(out, "nodes must join again") && strings.Contains(out, "meshca node token")
	t.Logf("after an emergency intermediate rotation: the node's earlier certificate -> %v; operator told to join nodes again: %t", err, hint)
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Errorf("a node certificate of the replaced intermediate: %v, want refused at the handshake", err)
	}
	if !hint {
		t.Errorf("ca rotate --emergency printed no word about nodes joining again:\n%s", out)
	}
	// A fresh join works at once.
	cert2 := m.joined("n2", "web")
	if _, fails := fetchOwn(t, secretservice.NewSecretDiscoveryServiceClient(m.dial(cert2)), "n2", "web", 1); fails > 0 {
		t.Errorf("a node joined after the emergency rotation was not served")
	}
}
