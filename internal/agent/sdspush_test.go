package agent_test

import (
	"log/slog"
	"net/http"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
)

// TestAgentSDSPushesCRLOnlyToBundleStream: with one state-of-the-world
// stream per secret, as Envoy opens them, a revocation at meshca (a new
// CRL in the bundle) is pushed to the bundle's stream only; each
// certificate's stream is sent nothing, so its next answer is the one to
// its next request.
func TestAgentSDSPushesCRLOnlyToBundleStream(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	ids := []string{"web", "api", "db"}
	for _, id := range ids {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id}, nil, http.StatusCreated)
	}
	cert := m.addAgentNode("agent-1", ids...)
	socket := filepath.Join(t.TempDir(), "sds.sock")
	a := startAgent(t, agent.Config{Conn: m.dial(m.app.XDS, cert), Node: "agent-1", TrustDomain: td, SDSSocket: socket,
		Clock: clk, Logger: slog.New(newLogRecorder(t))})
	waitState(t, a, "every certificate and the bundle", func(s agent.State) bool { return len(s.SVIDs) == len(ids) && s.BundlePEM != nil })

	type opened struct {
		s    *rawSotW
		name string
		last string // version and nonce of its last answer
		nc   string
	}
	var streams []*opened
	for _, name := range append([]string{bundleName}, idName("web"), idName("api"), idName("db")) {
		s := openRawSotW(t, socket, name)
		s.send([]string{name}, "", "", "")
		resp, got := s.recv()
		if !slices.Equal(namesOf(got), []string{name}) {
			t.Fatalf("stream %s answered %v", name, namesOf(got))
		}
		s.ack([]string{name}, resp)
		streams = append(streams, &opened{s: s, name: name, last: resp.GetVersionInfo(), nc: resp.GetNonce()})
	}

	other := m.addAgentNode("agent-2", "web")
	otherSerial := serial(testkit.ParseCertPEM(t, testkit.CertPEM(other.Certificate[0])))
	start := time.Now()
	m.admin("POST", api.PathNodes+"/agent-2/revoke", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	// The bundle stream: answers until one lists the revoked node
	// certificate (an unrelated CRL change before it is an answer too).
	b := streams[0]
	for {
		resp, got := b.s.recv()
		b.s.ack([]string{bundleName}, resp)
		if testkit.Revoked(t, got[bundleName].GetValidationContext().GetCrl().GetInlineBytes())[otherSerial] {
			break
		}
	}
	took := time.Since(start)

	// Each certificate's stream: its next answer is the one to this
	// request, naming its secret and the bundle.
	for _, o := range streams[1:] {
		both := sortedNames(o.name, bundleName)
		o.s.send(both, o.last, o.nc, "")
		_, got := o.s.recv()
		if !slices.Equal(namesOf(got), both) {
			t.Fatalf("stream %s: after the revocation its next answer serves %v, want %v (the answer to its request): it was pushed a change of a secret it does not name", o.name, namesOf(got), both)
		}
	}
	t.Logf("revocation → new CRL pushed to 1 of %d per-secret streams (the bundle's) in %s; the %d certificate streams were sent nothing",
		len(streams), took.Round(time.Millisecond), len(streams)-1)
}
