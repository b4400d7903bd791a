package xds

// Fakes for testing the server in its own package, after go-control-plane's
// pkg/server/v3/server_test.go: hand-written fakes for every interface the
// package declares, a fake gRPC stream that the generated handlers wrap,
// and connections authenticated the way the gate leaves them, without a
// network. Snapshots reach the server only through fixture.give and
// fixture.remove, so that a change in how they are handed over is made here.

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/nodeapi"
)

// bundleName is the trust bundle's secret, which every node receives.
const bundleName = "spiffe://mesh.local"

// testWait bounds every wait for the code under test; a loaded machine
// needs a generous margin, and a passing test never reaches it.
const testWait = 20 * time.Second

// secretOf is the name of an identity's secret.
func secretOf(identity string) string { return bundleName + "/" + identity }

// nodeConfig is what a node may receive.
type nodeConfig struct {
	identities []string // their secrets, besides the bundle
	withdrawn  []string // secret names the node held and lost
	// Names of the node's other resources.
	listeners, routes, clusters, endpoints []string
}

// resourcesOf is what a node with configuration c receives, besides the
// trust bundle, which the server adds itself.
func resourcesOf(c nodeConfig) map[string][]types.Resource {
	out := map[string][]types.Resource{}
	for _, id := range c.identities {
		out[resource.SecretType] = append(out[resource.SecretType], tlsSecret(secretOf(id)))
	}
	for _, n := range c.listeners {
		out[resource.ListenerType] = append(out[resource.ListenerType], &listenerv3.Listener{Name: n})
	}
	for _, n := range c.routes {
		out[resource.RouteType] = append(out[resource.RouteType], &routev3.RouteConfiguration{Name: n})
	}
	for _, n := range c.clusters {
		out[resource.ClusterType] = append(out[resource.ClusterType], &clusterv3.Cluster{Name: n})
	}
	for _, n := range c.endpoints {
		out[resource.EndpointType] = append(out[resource.EndpointType], &endpointv3.ClusterLoadAssignment{ClusterName: n})
	}
	return out
}

// tlsSecret is an identity's secret. The key is a placeholder: these
// tests check names, not key material.
func tlsSecret(name string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "chain of " + name}},
		PrivateKey:       &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: "placeholder key"}},
	}}}
}

// fakeAuth is the Authenticator: certificates by serial number.
type fakeAuth struct {
	mu    sync.Mutex
	nodes map[string]string // serial -> node
	errs  map[string]error  // serial -> error (with the node's name)
	calls int
}

var _ Authenticator = (*fakeAuth)(nil)

func (f *fakeAuth) AuthenticateNode(_ context.Context, leaf *x509.Certificate) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	serial := leaf.SerialNumber.String()
	if err, ok := f.errs[serial]; ok {
		return f.nodes[serial], err
	}
	if n, ok := f.nodes[serial]; ok {
		return n, nil
	}
	return "", errors.New("certificate is not recorded")
}

func (f *fakeAuth) calledTimes() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// fakeJoiner answers with the response or error it is given, and records
// what it was asked.
type fakeJoiner struct {
	mu    sync.Mutex
	resp  nodeapi.JoinResponse
	err   error
	calls []joinCall
}

type joinCall struct {
	method, node, token string
	csr                 []byte
}

var _ Joiner = (*fakeJoiner)(nil)

func (f *fakeJoiner) Join(_ context.Context, node, token string, csrDER []byte) (nodeapi.JoinResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, joinCall{method: "join", node: node, token: token, csr: csrDER})
	return f.resp, f.err
}

func (f *fakeJoiner) Renew(_ context.Context, node string, _ *x509.Certificate, csrDER []byte) (nodeapi.JoinResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, joinCall{method: "renew", node: node, csr: csrDER})
	return f.resp, f.err
}

func (f *fakeJoiner) answer(resp nodeapi.JoinResponse, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resp, f.err = resp, err
}

func (f *fakeJoiner) called() []joinCall {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.calls)
}

// fakeAudit is the DenialRecorder.
type fakeAudit struct {
	mu      sync.Mutex
	records []denial
}

type denial struct{ action, node, detail string }

var _ DenialRecorder = (*fakeAudit)(nil)

func (f *fakeAudit) RecordDenial(_ context.Context, action, node, detail string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.records = append(f.records, denial{action, node, detail})
}

func (f *fakeAudit) all() []denial {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.records)
}

// fixture is a Server with fakes for everything it depends on, and
// go-control-plane's server over its cache and callbacks, built as New
// builds them.
type fixture struct {
	t      *testing.T
	s      *Server
	xds    serverv3.Server
	clk    *clock.Fake
	auth   *fakeAuth
	joiner *fakeJoiner
	audit  *fakeAudit
	tel    *fakeTelemetry
	ca     *testCA
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	f := &fixture{
		t:      t,
		clk:    clock.NewFake(time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)),
		auth:   &fakeAuth{nodes: map[string]string{}, errs: map[string]error{}},
		joiner: &fakeJoiner{},
		audit:  &fakeAudit{},
		tel:    newFakeTelemetry(),
	}
	f.ca = newTestCA(t, "meshca issuing CA", f.clk.Now())
	s, err := New(Config{
		TrustDomain: spiffeid.RequireTrustDomainFromString("mesh.local"),
		Auth:        f.auth,
		Joiner:      f.joiner,
		Audit:       f.audit,
		Roots:       func() []*x509.Certificate { return []*x509.Certificate{f.ca.cert} },
		ServerCert:  func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return nil, errors.New("no handshakes here") },
		Clock:       f.clk,
		Telemetry:   f.tel,
	})
	if err != nil {
		t.Fatal(err)
	}
	f.s = s
	f.xds = serverv3.NewServer(t.Context(), s.cache, s.cb)
	if err := s.SetTrust(t.Context(), bundleSecret(bundleName, "bundle-pem")); err != nil {
		t.Fatal(err)
	}
	return f
}

// give publishes what node may receive, as nodeconfig hands it over.
// Every test sets snapshots up through give and remove.
func (f *fixture) give(node string, c nodeConfig) {
	f.t.Helper()
	if err := f.s.SetNode(context.Background(), node, resourcesOf(c), c.withdrawn); err != nil {
		f.t.Fatalf("publish %s: %v", node, err)
	}
}

// remove unregisters or revokes node, as nodeconfig reports it.
func (f *fixture) remove(node string) {
	f.t.Helper()
	f.s.RemoveNode(node)
}

// snapshot is node's current snapshot in the server's cache.
func (f *fixture) snapshot(node string) (cachev3.ResourceSnapshot, error) {
	return f.s.cache.GetSnapshot(node)
}

// testCA issues node certificates.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	next int64
}

func newTestCA(t *testing.T, name string, now time.Time) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, next: 100}
}

// issue makes a certificate with the SPIFFE ID spiffe://mesh.local/<path>,
// valid from an hour before now until notAfter.
func (c *testCA) issue(t *testing.T, path string, now, notAfter time.Time, usage x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c.next++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(c.next),
		NotBefore:    now.Add(-time.Hour), NotAfter: notAfter,
		URIs:        []*url.URL{{Scheme: "spiffe", Host: "mesh.local", Path: "/" + path}},
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// nodeCert issues node's certificate, valid for an hour, and records it
// with the Authenticator.
func (f *fixture) nodeCert(node string) *x509.Certificate {
	f.t.Helper()
	leaf := f.ca.issue(f.t, "node/"+node, f.clk.Now(), f.clk.Now().Add(time.Hour), x509.ExtKeyUsageClientAuth)
	f.auth.mu.Lock()
	f.auth.nodes[leaf.SerialNumber.String()] = node
	f.auth.mu.Unlock()
	return leaf
}

// tlsPeer is the context gRPC gives the calls of a TLS connection whose
// peer presented chain (none for a peer without a certificate).
func tlsPeer(ctx context.Context, chain ...*x509.Certificate) context.Context {
	return peer.NewContext(ctx, &peer.Peer{
		Addr: &net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 40000},
		AuthInfo: credentials.TLSInfo{State: tls.ConnectionState{PeerCertificates: chain},
			CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}},
	})
}

// conn is a node's connection as the gate leaves it after a handshake with
// a node certificate: counted by the limiter and tracked for closeNode.
// Closing it ends the calls made on it, as closing a TCP connection does.
type conn struct {
	ctx    context.Context // the calls' context: the peer, and cancelled on close
	closed chan struct{}
}

// connect opens a connection presenting leaf, as node's.
func (f *fixture) connect(node string, leaf *x509.Certificate) *conn {
	f.t.Helper()
	ctx, cancel := context.WithCancel(tlsPeer(f.t.Context(), leaf))
	c := &conn{ctx: ctx, closed: make(chan struct{})}
	raw := &closeConn{close: func() { cancel(); close(c.closed) }}
	tc := &trackedConn{Conn: raw, set: &f.s.conns, lim: f.s.lim, serial: leafSerial(leaf)}
	if _, ok := f.s.lim.admit(tc); !ok {
		f.t.Fatal("limiter refused a connection")
	}
	f.s.lim.authenticated(tc)
	if !f.s.conns.track(node, tc, maxConnectionsPerNode) {
		f.t.Fatal("too many connections for the node")
	}
	return c
}

// nodeConn is a connection with a fresh certificate of node.
func (f *fixture) nodeConn(node string) *conn { return f.connect(node, f.nodeCert(node)) }

// isClosed reports whether the server closed the connection.
func (c *conn) isClosed() bool {
	select {
	case <-c.closed:
		return true
	default:
		return false
	}
}

// closeConn is the network connection under a tracked connection: only
// Close is ever called on it here.
type closeConn struct {
	net.Conn
	once  sync.Once
	close func()
}

func (c *closeConn) Close() error { c.once.Do(c.close); return nil }

// fakeStream is a gRPC server stream: the generated handlers wrap it in
// their typed streams. The test sends requests with send and reads what
// the server sent with next.
type fakeStream struct {
	ctx  context.Context
	recv chan proto.Message
	sent chan proto.Message
	// reading, when set, gets a value each time the server calls RecvMsg.
	reading chan struct{}
	// received, when set, runs on the server's goroutine when RecvMsg has
	// taken a message, before it returns it. Set it before sending.
	received func()
}

var _ grpc.ServerStream = (*fakeStream)(nil)

func (s *fakeStream) Context() context.Context     { return s.ctx }
func (s *fakeStream) SetHeader(metadata.MD) error  { return nil }
func (s *fakeStream) SendHeader(metadata.MD) error { return nil }
func (s *fakeStream) SetTrailer(metadata.MD)       {}

func (s *fakeStream) SendMsg(m any) error {
	select {
	case s.sent <- proto.Clone(m.(proto.Message)):
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// RecvMsg returns the next request; io.EOF once the client closed its
// side; the context's error once the call or its connection ended.
func (s *fakeStream) RecvMsg(m any) error {
	if s.reading != nil {
		select {
		case s.reading <- struct{}{}:
		default: // nobody counts this many reads
		}
	}
	select {
	case msg, ok := <-s.recv:
		if !ok {
			return io.EOF
		}
		dst := m.(proto.Message)
		proto.Reset(dst)
		proto.Merge(dst, msg)
		if s.received != nil {
			s.received()
		}
		return nil
	case <-s.ctx.Done():
		return s.ctx.Err()
	}
}

// call is a stream being served.
type call struct {
	t *testing.T
	*fakeStream
	closeSend func()
	done      chan struct{}
	err       error
}

// open serves method (a stream of desc) on c, through the server's stream
// interceptor, as grpc-go would. srv implements desc.
func (f *fixture) open(c *conn, desc *grpc.ServiceDesc, method string, srv any) *call {
	f.t.Helper()
	ctx := f.t.Context()
	if c != nil {
		ctx = c.ctx
	}
	return f.openCtx(ctx, desc, method, srv)
}

// openCtx is open on a call context of the test's making.
func (f *fixture) openCtx(ctx context.Context, desc *grpc.ServiceDesc, method string, srv any) *call {
	f.t.Helper()
	var h grpc.StreamHandler
	for _, sd := range desc.Streams {
		if sd.StreamName == method {
			h = sd.Handler
		}
	}
	if h == nil {
		f.t.Fatalf("%s has no stream %s", desc.ServiceName, method)
	}
	ctx, cancel := context.WithCancel(ctx)
	recv := make(chan proto.Message, 16)
	var once sync.Once
	cl := &call{
		t:          f.t,
		fakeStream: &fakeStream{ctx: ctx, recv: recv, sent: make(chan proto.Message, 16), reading: make(chan struct{}, 1024)},
		closeSend:  func() { once.Do(func() { close(recv) }) },
		done:       make(chan struct{}),
	}
	info := &grpc.StreamServerInfo{FullMethod: "/" + desc.ServiceName + "/" + method, IsClientStream: true, IsServerStream: true}
	go func() {
		defer close(cl.done)
		cl.err = f.s.authStream(srv, cl.fakeStream, info, h)
		cancel() // grpc-go ends the call's context when the handler returns
	}()
	f.t.Cleanup(func() {
		cancel()
		<-cl.done
	})
	return cl
}

// reads waits until the server has called RecvMsg n times in all: with
// n-1 requests sent, it has handled them and waits for the next.
func (c *call) reads(n int) {
	c.t.Helper()
	for range n {
		select {
		case <-c.reading:
		case <-c.done:
			c.t.Fatalf("stream ended: %v", c.err)
		case <-time.After(testWait):
			c.t.Fatal("the server does not read the stream")
		}
	}
}

// send sends a request on the stream.
func (c *call) send(m proto.Message) {
	c.t.Helper()
	select {
	case c.recv <- m:
	case <-c.done:
		c.t.Fatalf("stream ended before the request was sent: %v", c.err)
	}
}

// offer sends a request unless the stream has ended: for a stream the
// server may refuse as it opens, where the refusal is the answer.
func (c *call) offer(m proto.Message) {
	select {
	case <-c.done:
	default:
		c.recv <- m // buffered: the request waits for a read that may never come
	}
}

// next returns the next message the server sent; it fails the test if
// the stream ends first.
func (c *call) next() proto.Message {
	c.t.Helper()
	select {
	case m := <-c.sent:
		return m
	case <-c.done:
		// A message sent just before the end is still readable.
		select {
		case m := <-c.sent:
			return m
		default:
		}
		c.t.Fatalf("stream ended without an answer: %v", c.err)
	case <-time.After(testWait):
		c.t.Fatal("no answer on the stream")
	}
	return nil
}

// wait returns the stream's end.
func (c *call) wait() error {
	c.t.Helper()
	select {
	case <-c.done:
		return c.err
	case <-time.After(testWait):
		c.t.Fatal("stream did not end")
		return nil
	}
}

// ended reports whether the stream has ended, without waiting.
func (c *call) ended() bool {
	select {
	case <-c.done:
		return true
	default:
		return false
	}
}

// sentNothing fails the test if the server sent anything on the stream.
func (c *call) sentNothing() {
	c.t.Helper()
	select {
	case m := <-c.sent:
		c.t.Fatalf("server sent %v", m)
	default:
	}
}

// namesOf lists the names of the resources of a SotW or delta response.
func namesOf(t *testing.T, m proto.Message) []string {
	t.Helper()
	var out []string
	switch r := m.(type) {
	case *discovery.DiscoveryResponse:
		for _, a := range r.GetResources() {
			res, err := a.UnmarshalNew()
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, cachev3.GetResourceName(res))
		}
	case *discovery.DeltaDiscoveryResponse:
		for _, res := range r.GetResources() {
			out = append(out, res.GetName())
		}
	default:
		t.Fatalf("not a discovery response: %T", m)
	}
	slices.Sort(out)
	return out
}

// csrPEM is a PEM certificate request (its content does not matter to
// the server, which passes the DER on).
func csrPEM(t *testing.T) (string, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: "node"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})), der
}

// denialsLike counts the audit records of action and node whose detail
// contains want.
func (f *fixture) denialsLike(action, node, want string) int {
	n := 0
	for _, d := range f.audit.all() {
		if d.action == action && d.node == node && strings.Contains(d.detail, want) {
			n++
		}
	}
	return n
}

// String helps failure messages.
func (d denial) String() string { return fmt.Sprintf("%s %s: %s", d.action, d.node, d.detail) }

// answer returns the next message the server sent, or the error that
// ended the stream first.
func (c *call) answer() (proto.Message, error) {
	c.t.Helper()
	select {
	case m := <-c.sent:
		return m, nil
	case <-c.done:
		select {
		case m := <-c.sent:
			return m, nil
		default:
		}
		return nil, c.err
	case <-time.After(testWait):
		c.t.Fatal("neither an answer nor the end of the stream")
		return nil, nil
	}
}

// unaryHandler finds a unary method of a generated service.
func unaryHandler(t *testing.T, desc *grpc.ServiceDesc, method string) grpc.MethodHandler {
	t.Helper()
	for _, m := range desc.Methods {
		if m.MethodName == method {
			return m.Handler
		}
	}
	t.Fatalf("%s has no method %s", desc.ServiceName, method)
	return nil
}

// fetch calls a unary discovery method (FetchSecrets, ...) of desc with
// the call context ctx, through the server's unary interceptor.
func (f *fixture) fetch(ctx context.Context, desc *grpc.ServiceDesc, method string, req *discovery.DiscoveryRequest) (*discovery.DiscoveryResponse, error) {
	f.t.Helper()
	h := unaryHandler(f.t, desc, method)
	out, err := h(f.xds, ctx, func(v any) error {
		proto.Merge(v.(proto.Message), req)
		return nil
	}, f.s.authUnary)
	if err != nil {
		return nil, err
	}
	return out.(*discovery.DiscoveryResponse), nil
}
