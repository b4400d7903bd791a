package app_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// mesh is a running meshca on loopback with a temp data directory.
type mesh struct {
	t     *testing.T
	app   *app.App
	clock clock.Clock
	http  *http.Client
	dir   string
	stop  func()
}

func startMesh(t *testing.T, clk clock.Clock) *mesh {
	return startMeshIn(t, clk, filepath.Join(t.TempDir(), "data"))
}

// restart stops meshca and starts it again on the same data directory.
func (m *mesh) restart() *mesh {
	m.stop()
	return startMeshIn(m.t, m.clock, m.dir)
}

// startMeshIn starts meshca on dir; tweaks change its configuration.
func startMeshIn(t *testing.T, clk clock.Clock, dir string, tweaks ...func(*config.Config)) *mesh {
	t.Helper()
	return startMeshWith(t, clk, dir, func(c *config.Config) {
		for _, tw := range tweaks {
			tw(c)
		}
	})
}

// startMeshWith starts meshca with edit applied to its configuration and
// with opts.
func startMeshWith(t *testing.T, clk clock.Clock, dir string, edit func(*config.Config), opts ...app.Option) *mesh {
	t.Helper()
	return startMeshLogged(t, clk, dir, edit, testkit.Logger(t), opts...)
}

// startMeshLogged is startMeshWith with meshca logging to log.
func startMeshLogged(t *testing.T, clk clock.Clock, dir string, edit func(*config.Config), log *slog.Logger, opts ...app.Option) *mesh {
	t.Helper()
	cfg := testkit.LoopbackConfig(dir)
	if edit != nil {
		edit(&cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	if clk != nil {
		opts = append(opts, app.WithClock(clk))
	} else {
		clk = clock.Real{}
	}
	a, err := app.Start(ctx, cfg, log, opts...)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Wait(ctx) }()
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("meshca stopped with: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("meshca did not stop within 20s")
		}
	}
	t.Cleanup(stop)
	return &mesh{t: t, app: a, clock: clk, http: &http.Client{Timeout: 30 * time.Second}, dir: dir, stop: stop}
}

// admin calls the admin API and decodes the answer; it fails the test on a
// status other than want.
func (m *mesh) admin(method, path string, body, out any, want int) {
	m.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, "http://"+m.app.Admin+path, rd)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := m.http.Do(req)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		m.t.Fatalf("%s %s: %d %s (want %d)", method, path, resp.StatusCode, data, want)
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			m.t.Fatalf("%s %s: %v", method, path, err)
		}
	}
}

func (m *mesh) addIdentity(name string) api.Identity {
	var id api.Identity
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: name}, &id, http.StatusCreated)
	return id
}

func (m *mesh) addNode(name, kind string, ids ...string) api.JoinToken {
	var tok api.JoinToken
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: name, Kind: kind, Identities: ids}, &tok, http.StatusCreated)
	return tok
}

func (m *mesh) bundle() *x509.CertPool {
	m.t.Helper()
	resp, err := m.http.Get("http://" + m.app.Admin + api.PathCABundle)
	if err != nil {
		m.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(data) {
		m.t.Fatal("empty bundle")
	}
	return pool
}

func (m *mesh) audit() []api.AuditEvent {
	var evs []api.AuditEvent
	m.admin("GET", api.PathAudit, nil, &evs, http.StatusOK)
	return evs
}

// denials counts the refusals of action exactly, from
// meshca_refusals_total: the audit log holds them aggregated per source
// and reason. It fails the test when refusals were counted but none is in
// the audit log (the first of each source and reason is recorded at once).
func (m *mesh) denials(action string) int {
	m.t.Helper()
	n := refusalsOf(m.t, m, action, "denied")
	if n == 0 {
		return 0
	}
	for _, e := range m.audit() {
		if e.Action == action && e.Outcome == "denied" {
			return n
		}
	}
	m.t.Fatalf("%d %s refusals counted, none in the audit log", n, action)
	return n
}

// serverTLS verifies meshca's xDS server as a node would: against the
// bundle, by its SPIFFE ID, at the test clock's time.
func (m *mesh) serverTLS(cert *tls.Certificate) *tls.Config {
	roots := m.bundle()
	cfg := &tls.Config{
		RootCAs: roots,
		Time:    m.clock.Now,
		// The server is identified by spiffe://mesh.local/meshca, not a host.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs, _, err := testkit.VerifyChain(raw, x509.VerifyOptions{Roots: roots, CurrentTime: m.clock.Now()})
			if err == nil && (len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != "spiffe://mesh.local/meshca") {
				err = errNotMeshca
			}
			return err
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

type testError string

func (e testError) Error() string { return string(e) }

const errNotMeshca = testError("server is not spiffe://mesh.local/meshca")

// join redeems a join token and returns the node's TLS certificate.
func (m *mesh) join(node, token string) (*tls.Certificate, error) {
	m.t.Helper()
	key, csr := testkit.NewCSR(m.t)
	conn := m.dial(nil)
	defer conn.Close() // a joining node holds no connection afterwards
	var resp nodeapi.JoinResponse
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := conn.Invoke(ctx, nodeapi.FullJoinMethod, &nodeapi.JoinRequest{Node: node, Token: token, CSRPEM: csr},
		&resp, grpc.ForceCodec(nodeapi.Codec{}))
	if err != nil {
		return nil, err
	}
	return testkit.TLSCert(resp.ChainPEM, key)
}

// joined adds a node for the identities and joins it.
func (m *mesh) joined(node string, ids ...string) *tls.Certificate {
	m.t.Helper()
	tok := m.addNode(node, "sidecar", ids...)
	cert, err := m.join(node, tok.Token)
	if err != nil {
		m.t.Fatalf("join %s: %v", node, err)
	}
	return cert
}

// issueCert has meshca sign a CSR made here for the existing identity
// ident, as `meshca cert issue` does: a certificate from meshca's CA that
// is not a node's.
func (m *mesh) issueCert(ident string) *tls.Certificate {
	m.t.Helper()
	key, csr := testkit.NewCSR(m.t)
	var out api.Cert
	m.admin("POST", api.PathCerts+"/"+ident, api.IssueCertRequest{CSRPEM: csr}, &out, http.StatusCreated)
	cert, err := testkit.TLSCert(out.ChainPEM, key)
	if err != nil {
		m.t.Fatalf("certificate for %s: %v", ident, err)
	}
	return cert
}

// renewNode asks over conn, a node's connection, for a new node
// certificate for a key made here, as `meshca bootstrap renew` does. It
// returns meshca's answer and the new key.
func renewNode(t *testing.T, ctx context.Context, conn *grpc.ClientConn) (*nodeapi.JoinResponse, *ecdsa.PrivateKey, error) {
	t.Helper()
	key, csr := testkit.NewCSR(t)
	var resp nodeapi.JoinResponse
	if err := conn.Invoke(ctx, nodeapi.FullRenewMethod, &nodeapi.RenewRequest{CSRPEM: csr}, &resp, grpc.ForceCodec(nodeapi.Codec{})); err != nil {
		return nil, nil, err
	}
	return &resp, key, nil
}

// mtlsClient calls the mTLS admin listener presenting cert, as a remote
// operator does; it does not check who answers (the tests that use it are
// about the client's credential). Close its idle connections when done.
func mtlsClient(cert *tls.Certificate) *http.Client {
	return &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{
		InsecureSkipVerify: true,
		Certificates:       []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13,
	}}}
}

// dial connects to the xDS port, presenting cert when given.
func (m *mesh) dial(cert *tls.Certificate) *grpc.ClientConn {
	m.t.Helper()
	conn, err := grpc.NewClient(m.app.XDS, grpc.WithTransportCredentials(credentials.NewTLS(m.serverTLS(cert))))
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { conn.Close() })
	return conn
}

func secretName(identity string) string {
	if identity == "" {
		return "spiffe://mesh.local"
	}
	return "spiffe://mesh.local/" + identity
}

func readBody(t *testing.T, resp *http.Response) []byte {
	t.Helper()
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
