package app_test

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/xds"
)

// TestAttackRevokedNodeCertificate: a revoked node's genuine certificate
// completes the handshake (so that its calls can be told why they are
// refused), but it must not buy more than no certificate does. From one
// address it opens more connections than the per-address limit for peers
// without a node certificate, and on each announces a 2 MiB FetchSecrets
// message and sends only its header: every call is refused from its
// headers, saying the node was revoked, before any body is read, and the
// connections over the address's limit are closed.
func TestAttackRevokedNodeCertificate(t *testing.T) {
	const perAddr, conns = 4, 12
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		c.XDS.MaxConnections = 64
		c.XDS.MaxUnauthenticatedConnections = 16
		c.XDS.MaxUnauthenticatedPerAddress = perAddr
	}, app.WithXDSLimits(func(l *xds.Limits) { l.HandshakeTimeout = 2 * time.Second }))
	m.addIdentity("echo")
	gone := m.joined("gone", "echo")
	live := m.joined("live", "echo")
	m.admin("POST", api.PathNodes+"/gone/revoke", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var open []*h2attacker
	closedEarly, refusedAtHeaders := 0, 0
	var answers []string
	for i := range conns {
		a, err := dialH2With(ctx, m.app.XDS, "127.0.0.3", m.serverTLS(gone))
		if err != nil {
			t.Fatalf("connection %d: the handshake of a revoked node's certificate failed: %v", i, err)
		}
		defer a.Close()
		// start fails when the server has already closed the connection.
		if a.start() == nil && !a.waitFor(5*time.Second, func() bool { return a.settings || a.err != nil }) {
			t.Fatalf("connection %d: neither served nor closed within 5s", i)
		}
		if closed, spoke := a.closedByServer(); closed && !spoke {
			closedEarly++
			continue
		}
		open = append(open, a)
		id, err := a.open(pathFetchSecrets)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		// The refusal may come before the message header is sent.
		a.send(id, grpcPrefix(2<<20-16), 5*time.Second)
		a.waitFor(5*time.Second, func() bool { return a.ended[id] != "" || a.err != nil })
		got := a.endedAs(id)
		answers = append(answers, got)
		if strings.HasPrefix(got, "grpc-status 7 ") && strings.Contains(got, "was revoked") {
			refusedAtHeaders++
		}
	}
	stillOpen := 0
	for _, a := range open {
		if closed, _ := a.closedByServer(); !closed {
			stillOpen++
		}
	}
	t.Logf("revoked node's certificate, %d connections from one address (limit %d without a valid node certificate): "+
		"%d served, %d closed before HTTP/2, %d still open; FetchSecrets announcing 2 MiB with only its header sent: %d/%d refused from the headers (%s)",
		conns, perAddr, len(open), closedEarly, stillOpen, refusedAtHeaders, len(open), clipStr(strings.Join(answers[:min(1, len(answers))], ""), 110))
	if len(open) > perAddr {
		t.Errorf("%d connections with a revoked node's certificate served from one address, limit %d", len(open), perAddr)
	}
	if refusedAtHeaders != len(open) {
		t.Errorf("%d of %d calls refused from their headers saying the node was revoked; answers %q", refusedAtHeaders, len(open), answers)
	}
	if _, fails := fetchOwn(t, secretservice.NewSecretDiscoveryServiceClient(m.dial(live)), "live", "echo", 3); fails > 0 {
		t.Errorf("the live node was not served: %d failures", fails)
	}
}

// TestAttackOneNodeCertificateManyConnections: one valid node certificate
// (a stolen copy, or a proxy in a reconnect loop) opens more connections
// than one node needs; the server serves at most 64 of them, so that it
// cannot take every connection slot from the other nodes, which are
// served meanwhile.
func TestAttackOneNodeCertificateManyConnections(t *testing.T) {
	const conns, perNode = 80, 64
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		c.XDS.MaxConnections = 100
		c.XDS.MaxUnauthenticatedConnections = 16
	})
	m.addIdentity("echo")
	stolen := m.joined("n1", "echo")
	other := m.joined("n2", "echo")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	served := 0
	for i := range conns {
		a, err := dialH2With(ctx, m.app.XDS, "127.0.0.6", m.serverTLS(stolen))
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		defer a.Close()
		if a.start() == nil && !a.waitFor(5*time.Second, func() bool { return a.settings || a.err != nil }) {
			t.Fatalf("connection %d: neither served nor closed within 5s", i)
		}
		if _, spoke := a.closedByServer(); spoke {
			served++
		}
	}
	_, fails := fetchOwn(t, secretservice.NewSecretDiscoveryServiceClient(m.dial(other)), "n2", "echo", 3)
	t.Logf("one node certificate, %d connections: %d served (limit %d per node); another node's fetches failed %d/3", conns, served, perNode, fails)
	if served > perNode {
		t.Errorf("%d connections of one node served, limit %d", served, perNode)
	}
	if fails > 0 {
		t.Errorf("another node was not served")
	}
}
