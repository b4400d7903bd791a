package agent_test

import (
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/rotation"
)

// TestAgentSurvivesMeshcaRestart: meshca stops; the agent keeps serving
// its certificate on the socket and warns past three quarters of its life;
// meshca starts again on the same data directory and address, and the
// agent renews with the node credentials it had.
func TestAgentSurvivesMeshcaRestart(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "web"}, nil, http.StatusCreated)
	cert := m.addAgentNode("agent-1", "web")
	conn := m.dial(m.app.XDS, cert)
	socket := filepath.Join(t.TempDir(), "sds.sock")
	logs := newLogRecorder(t)
	a := startAgent(t, agent.Config{Conn: conn, Node: "agent-1", TrustDomain: td, SDSSocket: socket, Clock: clk,
		Logger: slog.New(logs), Backoff: rotation.Backoff{Min: time.Second, Max: 10 * time.Second}})
	st := waitState(t, a, "web", func(s agent.State) bool { return len(s.SVIDs) == 1 && s.BundlePEM != nil })
	web, _ := st.SVID("web")
	stream := openSotW(t, sdsClient(t, socket), idName("web"))
	stream.until("web", func(m map[string]*tlsv3.Secret) bool { return m[idName("web")] != nil })

	m.stop()
	mark := logs.count()
	clk.Set(web.NotBefore.Add(web.NotAfter.Sub(web.NotBefore) * 4 / 5))
	logs.waitFor(t, mark, slog.LevelWarn, "expires soon")
	if st, _ := a.State(); len(st.SVIDs) != 1 || st.SVIDs[0].Serial != web.Serial {
		t.Fatal("the agent stopped serving web's certificate while meshca was down")
	}

	m = m.restart()
	deadline := time.Now().Add(waitLimit)
	for {
		st, changed := a.State()
		if v, ok := st.SVID("web"); ok && v.Serial != web.Serial {
			t.Logf("meshca restarted: web renewed, serial %s -> %s", web.Serial, v.Serial)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not renew after meshca restarted")
		}
		clk.Add(10 * time.Second) // one backoff step at most
		select {
		case <-changed:
		case <-time.After(200 * time.Millisecond):
		}
	}
	stream.until("the renewed certificate on the socket", func(ms map[string]*tlsv3.Secret) bool {
		s := ms[idName("web")]
		return s != nil && serial(leafOf(t, s)) != web.Serial
	})
}
