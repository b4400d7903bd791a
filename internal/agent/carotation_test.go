package agent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// TestAgentRekeysThroughCARotation rotates the intermediate, then the
// root, under a running agent whose identity poll is an hour away: meshca
// pushes the switch of issuing CA on the identity watch, and the agent
// re-keys its 720h certificate at once instead of at half-life (360h).
// The switch changes neither the trust bundle (a root rotation publishes
// the new root before it, and the secret does not change at the switch)
// nor, with nothing revoked, the CRL: only the push tells the agent. The
// rotation waits for the agent, then only for the node certificate, and
// ends once the node renews it. The agent's SDS socket serves the
// certificate from the new CA.
func TestAgentRekeysThroughCARotation(t *testing.T) {
	for _, tc := range []struct {
		name string
		root bool
		poll time.Duration // the agent's identity poll
	}{
		{"intermediate", false, time.Hour},
		{"root", true, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) { testAgentRekeys(t, tc.root, tc.poll) })
	}
}

func testAgentRekeys(t *testing.T, root bool, poll time.Duration) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "web", TTL: "720h"}, nil, http.StatusCreated)
	var nodeCert atomic.Pointer[tls.Certificate]
	nodeCert.Store(m.addAgentNode("agent-1", "web"))
	// The node certificate is renewed beside the agent: every handshake
	// presents the current one.
	tc := m.tlsConfig(nil)
	tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return nodeCert.Load(), nil }
	conn, err := grpc.NewClient(m.app.XDS, grpc.WithTransportCredentials(credentials.NewTLS(tc)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })

	socket := filepath.Join(t.TempDir(), "sds.sock")
	a := startAgent(t, agent.Config{Conn: conn, Node: "agent-1", TrustDomain: td, SDSSocket: socket,
		IdentityPoll: poll, WatchedPoll: poll, Clock: clk, Logger: testkit.Logger(t)})
	st := waitState(t, a, "a certificate for web", func(s agent.State) bool { _, ok := s.SVID("web"); return ok })
	old, _ := st.SVID("web")
	caState := func() api.CA {
		var c api.CA
		m.admin("GET", api.PathCA, nil, &c, http.StatusOK)
		return c
	}
	before := caState()
	if old.IssuerSerial == "" || old.IssuerSerial != before.Issuer.Serial {
		t.Fatalf("agent's certificate names issuer %q; meshca issues from %q", old.IssuerSerial, before.Issuer.Serial)
	}
	sds := openSotW(t, sdsClient(t, socket), idName("web"))
	sds.until("web's certificate", func(s map[string]*tlsv3.Secret) bool {
		return s[idName("web")] != nil && serial(leafOf(t, s[idName("web")])) == old.Serial
	})

	start := clk.Now()
	m.admin("POST", api.PathCARotate, api.RotateCARequest{Root: root}, nil, http.StatusOK)
	// tick moves meshca's rotation loop on by a second; the loop may not
	// be parked yet, so the condition is asked after each tick, within a
	// bound.
	ticks, sawWait := 0, false
	tickUntil := func(what string, ok func(api.CA) bool) api.CA {
		t.Helper()
		deadline := time.Now().Add(waitLimit)
		for {
			c := caState()
			if ok(c) {
				return c
			}
			if ticks%10 == 0 {
				t.Logf("tick %d: %s; waiting for %q", ticks, what, waitingFor(c))
			}
			if time.Now().After(deadline) || ticks > 600 {
				t.Fatalf("after %d ticks: never %s; CA state %+v, rotation %+v", ticks, what, c.Issuer, c.Rotation)
			}
			clk.Add(time.Second)
			ticks++
			if s, changed := a.State(); s.Version == st.Version {
				select { // give the loops a moment; any agent change ends it
				case <-changed:
				case <-time.After(20 * time.Millisecond):
				}
			}
		}
	}
	switched := tickUntil("switched issuance", func(c api.CA) bool { return c.Issuer.Serial != before.Issuer.Serial })
	switchedAt := clk.Now()

	// The rotation waits for the agent, which re-keys as meshca pushes
	// the switch.
	var web agent.SVID
	tickUntil("web re-keyed under the new issuer", func(c api.CA) bool {
		if c.Rotation != nil && c.Rotation.OldAgentCerts == 1 && strings.Contains(c.Rotation.WaitingFor, "1 agent certificate(s) to be re-keyed by their agents") {
			sawWait = true
		}
		st, _ = a.State()
		web, _ = st.SVID("web")
		return web.IssuerSerial == switched.Issuer.Serial
	})
	rekeyedAfter := clk.Now().Sub(switchedAt)
	// The ticks (a second of fake time each) go on while the push and
	// the agent's CSR cross the loaded machine: a minute of margin, far
	// from the poll and the half-life.
	if within := time.Minute; rekeyedAfter > within {
		t.Fatalf("re-keyed %s after the switch; want within %s (identity poll %s)", rekeyedAfter, within, poll)
	}
	if web.Serial == old.Serial || web.Key == old.Key {
		t.Fatal("the re-keyed certificate is the old one, or has the old key")
	}

	// meshca waits only for the node certificate now.
	waiting := tickUntil("waiting for the node certificate only", func(c api.CA) bool {
		return c.Rotation != nil && c.Rotation.OwnWorkDone && c.Rotation.OldAgentCerts == 0 && c.Rotation.OldNodeCerts == 1
	})
	// The agent may re-key before the rotation first looks: waiting for
	// it is then never reported.
	t.Logf("the rotation reported waiting for the agent's certificate: %t", sawWait)
	if strings.Contains(waiting.Rotation.WaitingFor, "agent certificate") {
		t.Fatalf("rotation still waits for agent certificates: %q", waiting.Rotation.WaitingFor)
	}
	renewNodeCert(t, conn, &nodeCert)
	done := tickUntil("the rotation ended", func(c api.CA) bool { return c.Rotation == nil })
	if done.LastRotation == nil || done.Issuer.Serial != switched.Issuer.Serial {
		t.Fatalf("rotation ended without a record, or with another issuer: %+v", done)
	}

	// The socket serves the new certificate, chained to the new issuer.
	got := sds.until("web's certificate from the new CA", func(s map[string]*tlsv3.Secret) bool {
		return s[idName("web")] != nil && serial(leafOf(t, s[idName("web")])) == web.Serial
	})
	leaf := leafOf(t, got[idName("web")])
	if len(web.Chain) < 2 || !bytes.Equal(leaf.AuthorityKeyId, web.Chain[1].SubjectKeyId) || web.Chain[1].SerialNumber.Text(16) != switched.Issuer.Serial {
		t.Fatalf("served certificate is not signed by the new issuer %s", switched.Issuer.Serial)
	}
	t.Logf("root=%t: agent re-keyed %s of fake time after the switch (identity poll %s, half-life %s); rotation ended after %d ticks (%s of fake time)",
		root, rekeyedAfter, poll, old.NotAfter.Sub(old.NotBefore)/2, ticks, clk.Now().Sub(start))
}

// renewNodeCert renews the node certificate on conn, as the agent's node
// side does, and presents the new one from then on.
func renewNodeCert(t *testing.T, conn *grpc.ClientConn, cur *atomic.Pointer[tls.Certificate]) {
	t.Helper()
	key, csr := testkit.NewCSR(t)
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var resp nodeapi.JoinResponse
	if err := conn.Invoke(ctx, nodeapi.FullRenewMethod, &nodeapi.RenewRequest{CSRPEM: csr}, &resp, grpc.ForceCodec(nodeapi.Codec{})); err != nil {
		t.Fatalf("renew the node certificate: %v", err)
	}
	cert, err := testkit.TLSCert(resp.ChainPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	cur.Store(cert)
}

func waitingFor(c api.CA) string {
	if c.Rotation == nil {
		return ""
	}
	return c.Rotation.WaitingFor
}
