package app_test

import (
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

// TestReplicaCutOffFromEtcd cuts a running meshca's path to etcd (a TCP
// proxy between them, cut at a known moment): within its contact bound /readyz turns 503 and every signing path
// (identity add, certificate reissue, node join) fails with a 503-class
// error that says why; when etcd returns, the replica is ready and signs
// again.
func TestReplicaCutOffFromEtcd(t *testing.T) {
	const every, bound = 100 * time.Millisecond, time.Second
	e := testkit.StartEtcd(t)
	path := testkit.StartProxy(t, e.Endpoint)
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		c.Store.Etcd = config.Etcd{Endpoints: []string{path.Addr}, Prefix: "/cutoff"}
	}, app.WithStoreContact(every, bound))
	m.addIdentity("web")
	tok := m.addNode("n1", "sidecar", "web")
	m.addIdentity("echo")
	n2 := m.joined("n2", "echo")
	streaming := subscribe(t, m, "n2", n2, secretName(""), secretName("echo"))
	streaming.next()
	client := &http.Client{Timeout: 3 * time.Second}
	ready := func() (bool, string) {
		resp, err := client.Get("http://" + m.app.Admin + "/readyz")
		if err != nil {
			return false, err.Error()
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode == http.StatusOK, string(b)
	}
	if ok, body := ready(); !ok {
		t.Fatalf("not ready on etcd: %s", body)
	}

	path.Cut()
	cut := time.Now()
	var body string
	if !pollUntil(bound+10*time.Second, 20*time.Millisecond, func() bool {
		var ok bool
		ok, body = ready()
		return !ok
	}) {
		t.Fatalf("still ready %s after the cut", time.Since(cut))
	}
	unready := time.Since(cut)
	t.Logf("etcd cut off -> /readyz 503 after %s (probe every %s, contact bound %s): %s", unready.Round(time.Millisecond), every, bound, strings.TrimSpace(body))
	// Not before the bound has passed since the last answered probe, which
	// is at most one probe interval before the cut.
	if unready < bound-every {
		t.Fatalf("unready after %s, sooner than the bound %s allows", unready, bound)
	}
	// The bound is measured from the last answered probe, which is before
	// the cut; the margin is for a loaded machine's polling.
	if unready > bound+2*time.Second {
		t.Fatalf("unready only after %s, the bound is %s", unready, bound)
	}
	if !strings.Contains(body, "no answer from etcd") {
		t.Fatalf("/readyz does not say why: %q", body)
	}

	// The node's stream is closed: what it holds can no longer be
	// confirmed current.
	select {
	case err := <-streaming.done:
		t.Logf("etcd cut off -> the node's xDS stream closed after %s (%v)", time.Since(cut).Round(time.Millisecond), status.Code(err))
	case <-time.After(bound + every + bound + 5*time.Second):
		t.Fatalf("the node's stream is still open %s after the cut", time.Since(cut))
	}

	var apiErr api.Error
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "db"}, &apiErr, http.StatusServiceUnavailable)
	if apiErr.Code != api.CodeUnavailable || !strings.Contains(apiErr.Error, "does not sign until etcd answers again") {
		t.Fatalf("identity add while cut off: %+v", apiErr)
	}
	m.admin("POST", api.PathReissue+"/web", struct{}{}, &apiErr, http.StatusServiceUnavailable)
	if apiErr.Code != api.CodeUnavailable {
		t.Fatalf("reissue while cut off: %+v", apiErr)
	}
	// The xDS port refuses even the handshake: it needs the issuing CAs
	// from etcd. A node sees Unavailable and tries another replica.
	if _, err := m.join("n1", tok.Token); status.Code(err) != codes.Unavailable {
		t.Fatalf("join while cut off: %v, want Unavailable", err)
	}

	path.Restore()
	back := time.Now()
	if !pollUntil(30*time.Second, 20*time.Millisecond, func() bool { ok, _ := ready(); return ok }) {
		_, body = ready()
		t.Fatalf("not ready 30s after etcd returned: %s", body)
	}
	t.Logf("etcd reachable again -> /readyz 200 after %s", time.Since(back).Round(time.Millisecond))
	m.addIdentity("db")
	if _, err := m.join("n1", tok.Token); err != nil {
		t.Fatalf("join after etcd returned: %v", err)
	}
	// The node reconnects and gets the next change.
	streaming = subscribe(t, m, "n2", n2, secretName(""), secretName("echo"))
	streaming.next()
	var reissued api.Identity
	m.admin("POST", api.PathReissue+"/echo", struct{}{}, &reissued, http.StatusOK)
	for {
		if s := streaming.next()[secretName("echo")]; s != nil && serialOf(t, s) == reissued.Cert.Serial {
			break
		}
	}
}
