package agent_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

const (
	trustDomain = "mesh.local"
	waitLimit   = 20 * time.Second // generous: the machine is shared
)

var td = spiffeid.RequireTrustDomainFromString(trustDomain)

// meshca is a running meshca on loopback, on the test's fake clock.
type meshca struct {
	t     *testing.T
	app   *app.App
	clock *clock.Fake
	dir   string
	http  *http.Client
	stop  func()
}

func startMeshca(t *testing.T, clk *clock.Fake) *meshca {
	t.Helper()
	return startMeshcaIn(t, clk, filepath.Join(t.TempDir(), "data"), "127.0.0.1:0")
}

// restart stops meshca and starts it again on the same data directory and
// xDS address.
func (m *meshca) restart() *meshca {
	m.t.Helper()
	m.stop()
	return startMeshcaIn(m.t, m.clock, m.dir, m.app.XDS)
}

func startMeshcaIn(t *testing.T, clk *clock.Fake, dir, xdsListen string) *meshca {
	t.Helper()
	cfg := testkit.LoopbackConfig(dir)
	cfg.XDS.Listen = xdsListen
	ctx, cancel := context.WithCancel(context.Background())
	a, err := app.Start(ctx, cfg, testkit.Logger(t), app.WithClock(clk))
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- a.Wait(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("meshca stopped with: %v", err)
				}
			case <-time.After(waitLimit):
				t.Error("meshca did not stop")
			}
		})
	}
	t.Cleanup(stop)
	return &meshca{t: t, app: a, clock: clk, dir: dir, http: &http.Client{Timeout: waitLimit}, stop: stop}
}

func (m *meshca) admin(method, path string, body, out any, want int) {
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

func (m *meshca) roots() *x509.CertPool {
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

// tlsConfig verifies meshca as a node does, at the fake clock's time.
func (m *meshca) tlsConfig(cert *tls.Certificate) *tls.Config {
	roots := m.roots()
	cfg := &tls.Config{
		Time:               m.clock.Now,
		InsecureSkipVerify: true, // verified below, by SPIFFE ID
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs, _, err := testkit.VerifyChain(raw, x509.VerifyOptions{Roots: roots, CurrentTime: m.clock.Now()})
			if err == nil && certs[0].URIs[0].String() != "spiffe://"+trustDomain+"/meshca" {
				return io.ErrUnexpectedEOF
			}
			return err
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return cfg
}

// dial connects to addr (meshca or a proxy in front of it) with cert,
// reconnecting quickly once the path is back.
func (m *meshca) dial(addr string, cert *tls.Certificate) *grpc.ClientConn {
	m.t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(m.tlsConfig(cert))),
		grpc.WithConnectParams(grpc.ConnectParams{Backoff: backoff.Config{BaseDelay: 50 * time.Millisecond, Multiplier: 1.6, MaxDelay: 300 * time.Millisecond}, MinConnectTimeout: 2 * time.Second}))
	if err != nil {
		m.t.Fatal(err)
	}
	m.t.Cleanup(func() { conn.Close() })
	return conn
}

// addAgentNode registers an agent node for ids and joins it.
func (m *meshca) addAgentNode(node string, ids ...string) *tls.Certificate {
	m.t.Helper()
	var tok api.JoinToken
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: node, Kind: "sidecar", Identities: ids, Agent: true}, &tok, http.StatusCreated)
	return m.join(node, tok.Token)
}

// join redeems a join token and returns the node's certificate.
func (m *meshca) join(node, token string) *tls.Certificate {
	m.t.Helper()
	key, csr := testkit.NewCSR(m.t)
	conn := m.dial(m.app.XDS, nil)
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	var resp nodeapi.JoinResponse
	if err := conn.Invoke(ctx, nodeapi.FullJoinMethod, &nodeapi.JoinRequest{Node: node, Token: token, CSRPEM: csr}, &resp, grpc.ForceCodec(nodeapi.Codec{})); err != nil {
		m.t.Fatalf("join %s: %v", node, err)
	}
	cert, err := testkit.TLSCert(resp.ChainPEM, key)
	if err != nil {
		m.t.Fatal(err)
	}
	return cert
}

// logRecorder keeps every record an agent logs, for tests that wait for
// one.
type logRecorder struct {
	next slog.Handler
	mu   sync.Mutex
	recs []slog.Record
	wake chan struct{}
}

func newLogRecorder(t *testing.T) *logRecorder {
	return &logRecorder{next: testkit.Logger(t).Handler(), wake: make(chan struct{})}
}

func (l *logRecorder) Enabled(context.Context, slog.Level) bool { return true }
func (l *logRecorder) Handle(ctx context.Context, r slog.Record) error {
	l.mu.Lock()
	l.recs = append(l.recs, r.Clone())
	close(l.wake)
	l.wake = make(chan struct{})
	l.mu.Unlock()
	return l.next.Handle(ctx, r)
}
func (l *logRecorder) WithAttrs(as []slog.Attr) slog.Handler { return l } // the agent adds none
func (l *logRecorder) WithGroup(string) slog.Handler         { return l }

// waitFor waits until a record at level with msg containing substr was
// logged after the first skip records.
func (l *logRecorder) waitFor(t *testing.T, skip int, level slog.Level, substr string) slog.Record {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		l.mu.Lock()
		for _, r := range l.recs[min(skip, len(l.recs)):] {
			if r.Level == level && strings.Contains(r.Message, substr) {
				l.mu.Unlock()
				return r
			}
		}
		wake := l.wake
		l.mu.Unlock()
		select {
		case <-wake:
		case <-deadline:
			t.Fatalf("no %s record containing %q logged within %s", level, substr, waitLimit)
		}
	}
}

func (l *logRecorder) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.recs)
}

// startAgent runs an agent for node over conn until the test ends.
func startAgent(t *testing.T, cfg agent.Config) *agent.Agent {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("agent stopped with: %v", err)
			}
		case <-time.After(waitLimit):
			t.Error("agent did not stop")
		}
	})
	return a
}

// waitState waits until the agent's state satisfies ok.
func waitState(t *testing.T, a *agent.Agent, what string, ok func(agent.State) bool) agent.State {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		st, changed := a.State()
		if ok(st) {
			return st
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("agent never reached: %s", what)
		}
	}
}

// sdsClient is an SDS client on the agent's Unix socket, as Envoy is.
func sdsClient(t *testing.T, socket string) secretv3.SecretDiscoveryServiceClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return secretv3.NewSecretDiscoveryServiceClient(conn)
}

// sotw is one state-of-the-world SDS stream that acknowledges everything.
type sotw struct {
	t      *testing.T
	stream secretv3.SecretDiscoveryService_StreamSecretsClient
	names  []string
}

func openSotW(t *testing.T, c secretv3.SecretDiscoveryServiceClient, names ...string) *sotw {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := c.StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	s := &sotw{t: t, stream: stream, names: names}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	return s
}

// next receives one answer, acknowledges it and returns its secrets by name.
func (s *sotw) next() (map[string]*tlsv3.Secret, error) {
	resp, err := s.stream.Recv()
	if err != nil {
		return nil, err
	}
	out := secretsOf(s.t, resp.GetResources())
	err = s.stream.Send(&discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resource.SecretType, ResourceNames: s.names,
		VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()})
	return out, err
}

// until receives answers until ok holds, within waitLimit.
func (s *sotw) until(what string, ok func(map[string]*tlsv3.Secret) bool) map[string]*tlsv3.Secret {
	s.t.Helper()
	type answer struct {
		m   map[string]*tlsv3.Secret
		err error
	}
	deadline := time.After(waitLimit)
	for {
		ch := make(chan answer, 1)
		go func() {
			m, err := s.next()
			ch <- answer{m, err}
		}()
		select {
		case a := <-ch:
			if a.err != nil {
				s.t.Fatalf("SDS stream: %v", a.err)
			}
			if ok(a.m) {
				return a.m
			}
		case <-deadline:
			s.t.Fatalf("SDS stream never delivered: %s", what)
		}
	}
}
