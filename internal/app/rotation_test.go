package app_test

import (
	"crypto/tls"
	"fmt"
	"net/http"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// holder keeps the latest secrets a proxy received.
type holder struct {
	p       *proxy
	secrets map[string]*tlsv3.Secret
}

// drain applies every update already received, without waiting.
func (h *holder) drain() {
	for {
		select {
		case u := <-h.p.updates:
			for k, v := range u {
				h.secrets[k] = v
			}
		default:
			return
		}
	}
}

// validAt reports whether the held certificate of id is valid at now.
func (h *holder) validAt(t *testing.T, id string, now time.Time) (tls.Certificate, bool) {
	s := h.secrets[secretName(id)]
	if s == nil {
		return tls.Certificate{}, false
	}
	c := tlsCert(t, s)
	return c, !now.Before(c.Leaf.NotBefore) && now.Before(c.Leaf.NotAfter)
}

func TestLeafRotationAcrossStreams(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	for _, id := range []string{"echo", "web"} {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id, TTL: "5m"}, nil, http.StatusCreated)
	}
	server := &holder{p: subscribe(t, m, "server-node", m.joined("server-node", "echo"), secretName(""), secretName("echo")), secrets: map[string]*tlsv3.Secret{}}
	client := &holder{p: subscribe(t, m, "client-node", m.joined("client-node", "web"), secretName(""), secretName("web")), secrets: map[string]*tlsv3.Secret{}}
	for _, h := range []*holder{server, client} {
		for k, v := range h.p.next() {
			h.secrets[k] = v
		}
	}

	seen := map[string]map[string]bool{"echo": {}, "web": {}}
	handshakes := 0
	// 16 minutes of fake time in 10s steps: more than three 5m lifetimes.
	for step := 0; step < 96; step++ {
		// Move the clock while meshca's loops are parked; once they are
		// parked again every renewal due is made, and the nodes must come
		// to hold the current certificates (pushed over their streams).
		advance(t, clk, 10*time.Second)
		now := clk.Now()
		current := m.serials()
		server.await(t, fmt.Sprintf("step %d: server-node holds echo %s", step, current["echo"]), func() bool { return server.holds(t, "echo", current["echo"]) })
		client.await(t, fmt.Sprintf("step %d: client-node holds web %s", step, current["web"]), func() bool { return client.holds(t, "web", current["web"]) })
		srv, okS := server.validAt(t, "echo", now)
		cli, okC := client.validAt(t, "web", now)
		if !okS || !okC {
			t.Fatalf("step %d (%s): a node holds no valid certificate (echo ok=%v, web ok=%v)", step, now.Format(time.TimeOnly), okS, okC)
		}
		seen["echo"][fmt.Sprintf("%x", srv.Leaf.SerialNumber)] = true
		seen["web"][fmt.Sprintf("%x", cli.Leaf.SerialNumber)] = true
		if step%6 == 0 {
			at := func() time.Time { return now }
			if err := handshakeAt(t, at, srv, server.secrets[secretName("")], cli, client.secrets[secretName("")]); err != nil {
				t.Fatalf("step %d: handshake failed: %v", step, err)
			}
			handshakes++
		}
	}
	for id, serials := range seen {
		if len(serials) < 4 {
			t.Fatalf("%s went through %d certificates, want at least 4 (three rotations)", id, len(serials))
		}
	}
	t.Logf("echo: %d certificates, web: %d certificates, %d handshakes, none failed", len(seen["echo"]), len(seen["web"]), handshakes)
	renewals := 0
	for _, e := range m.audit() {
		if e.Action == "identity.reissue" && e.Actor == "rotation" && e.Outcome == "ok" {
			renewals++
		}
	}
	if renewals < 6 {
		t.Fatalf("%d audited renewals, want at least 6", renewals)
	}
}
