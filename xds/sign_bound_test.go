package xds

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/nodeapi"
)

// blockingSigner counts the CSRs being signed at once and holds each until
// released (or its caller leaves).
type blockingSigner struct {
	release chan struct{}

	mu        sync.Mutex
	now, peak int
	calls     int
	changed   chan struct{} // closed and replaced at each change
}

func newBlockingSigner() *blockingSigner {
	return &blockingSigner{release: make(chan struct{}), changed: make(chan struct{})}
}

func (b *blockingSigner) SignCSR(ctx context.Context, node string, _ *x509.Certificate, identity string, _ []byte) (nodeapi.SignResponse, error) {
	b.update(func() { b.now++; b.calls++; b.peak = max(b.peak, b.now) })
	defer b.update(func() { b.now-- })
	select {
	case <-b.release:
		return nodeapi.SignResponse{Identity: identity, Serial: "1"}, nil
	case <-ctx.Done():
		return nodeapi.SignResponse{}, ctx.Err()
	}
}

func (b *blockingSigner) update(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f()
	close(b.changed)
	b.changed = make(chan struct{})
}

// waitSigning waits until n CSRs are being signed.
func (b *blockingSigner) waitSigning(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		b.mu.Lock()
		now, ch := b.now, b.changed
		b.mu.Unlock()
		if now == n {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%d CSRs being signed, want %d", now, n)
		}
	}
}

func (b *blockingSigner) counts() (peak, calls int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.peak, b.calls
}

// signServer is a Server with signer serving on a free loopback port, CSR
// signing bounded at maxSigning with maxQueue waiting.
type signServer struct {
	f    *fixture
	addr string
	sig  *blockingSigner
	pool *x509.CertPool
}

func startSignServer(t *testing.T, maxSigning, maxQueue int) *signServer {
	t.Helper()
	f := newFixture(t)
	sig := newBlockingSigner()
	f.s.cfg.Signer = sig
	f.s.signs = newSignGate(maxSigning, maxQueue)
	srvCert := f.ca.pair(t, "meshca", x509.ExtKeyUsageServerAuth, f.clk.Now())
	f.s.cfg.ServerCert = func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return srvCert, nil }
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.s.Run(ctx, ln) }()
	t.Cleanup(func() {
		// Held CSRs end first, so that the server stops at once.
		select {
		case <-sig.release:
		default:
			close(sig.release)
		}
		cancel()
		<-done
	})
	pool := x509.NewCertPool()
	pool.AddCert(f.ca.cert)
	return &signServer{f: f, addr: ln.Addr().String(), sig: sig, pool: pool}
}

// pair is a certificate and key for spiffe://mesh.local/<path>, also valid
// for 127.0.0.1.
func (c *testCA) pair(t *testing.T, path string, usage x509.ExtKeyUsage, now time.Time) *tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	c.next++
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(c.next), NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		URIs:        []*url.URL{{Scheme: "spiffe", Host: "mesh.local", Path: "/" + path}},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
}

// dial connects as node over TLS with a node certificate meshca knows.
func (s *signServer) dial(t *testing.T, node string) *grpc.ClientConn {
	t.Helper()
	s.f.give(node, nodeConfig{identities: []string{"web"}})
	cert := s.f.ca.pair(t, "node/"+node, x509.ExtKeyUsageClientAuth, s.f.clk.Now())
	s.f.auth.mu.Lock()
	s.f.auth.nodes[cert.Leaf.SerialNumber.String()] = node
	s.f.auth.mu.Unlock()
	conn, err := grpc.NewClient(s.addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{*cert}, RootCAs: s.pool, MinVersion: tls.VersionTLS12,
		Time: s.f.clk.Now, // the test CA lives on the server's fake clock
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// signAll sends n CSRs at once on conn; each code arrives on the channel.
func signAll(ctx context.Context, conn *grpc.ClientConn, n int, csr []byte) <-chan codes.Code {
	out := make(chan codes.Code, n)
	for range n {
		go func() {
			var resp nodeapi.SignResponse
			err := conn.Invoke(ctx, nodeapi.FullSignMethod, &nodeapi.SignRequest{Identity: "web", CSR: csr}, &resp, grpc.ForceCodec(nodeapi.Codec{}))
			out <- status.Code(err)
		}()
	}
	return out
}

// collect takes n codes, counting each.
func collect(t *testing.T, codesc <-chan codes.Code, n int) map[codes.Code]int {
	t.Helper()
	got := map[codes.Code]int{}
	deadline := time.After(20 * time.Second)
	for range n {
		select {
		case c := <-codesc:
			got[c]++
		case <-deadline:
			t.Fatalf("after 20 s only %v of %d calls answered", got, n)
		}
	}
	return got
}

// TestAttackSignCSRStorm: one node (a stolen node key, or every identity
// of an agent re-keying after a CA switch) sends 24 CSRs at once over real
// TLS to a meshca signing 2 at a time with 4 waiting. Never more than 2 are
// signed at once; the 18 beyond the queue are refused at once with
// ResourceExhausted while the others are still held; the 6 admitted are
// signed once their turn comes. A caller that leaves while waiting is never
// signed. One node's share of the queue is bounded, so another node is
// still admitted.
func TestAttackSignCSRStorm(t *testing.T) {
	_, csr := csrPEM(t)
	t.Run("bounded", func(t *testing.T) {
		s := startSignServer(t, 2, 4)
		conn := s.dial(t, "hostile")
		answers := signAll(t.Context(), conn, 24, csr)
		refused := collect(t, answers, 18)
		if refused[codes.ResourceExhausted] != 18 {
			t.Fatalf("while 6 CSRs were held: %v, want 18 ResourceExhausted", refused)
		}
		s.sig.waitSigning(t, 2)
		close(s.sig.release)
		signed := collect(t, answers, 6)
		peak, calls := s.sig.counts()
		st := s.f.s.Stats()
		t.Logf("24 CSRs at once from one node, 2 signing + 4 queued: %d refused at once, %v then; at most %d signed at once; signer called %d times; csrs_refused=%d",
			refused[codes.ResourceExhausted], signed, peak, calls, st.CSRsRefused)
		if signed[codes.OK] != 6 || peak != 2 || calls != 6 || st.CSRsRefused != 18 {
			t.Fatalf("admitted: %v, peak %d, signer calls %d, refused %d; want 6 OK, peak 2, 6 calls, 18 refused", signed, peak, calls, st.CSRsRefused)
		}
	})
	t.Run("caller leaves while waiting", func(t *testing.T) {
		s := startSignServer(t, 1, 4)
		conn := s.dial(t, "agent")
		held := signAll(t.Context(), conn, 1, csr)
		s.sig.waitSigning(t, 1)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		waiting := signAll(ctx, conn, 1, csr)
		waitStats(t, s.f.s, func(Stats) bool { return s.f.s.signs.waiting() == 1 })
		cancel()
		if c := collect(t, waiting, 1); c[codes.Canceled] != 1 {
			t.Fatalf("a waiting CSR whose caller left: %v, want Canceled", c)
		}
		// The server learns of the leaving from the stream's reset.
		waitStats(t, s.f.s, func(st Stats) bool { return st.CSRsAbandoned == 1 })
		close(s.sig.release)
		if c := collect(t, held, 1); c[codes.OK] != 1 {
			t.Fatalf("held CSR: %v", c)
		}
		if _, calls := s.sig.counts(); calls != 1 {
			t.Fatalf("signer called %d times, want 1: the abandoned CSR was signed", calls)
		}
		t.Logf("a CSR whose caller left while waiting: not signed (signer calls 1), csrs_abandoned=1")
	})
	t.Run("one node's share", func(t *testing.T) {
		s := startSignServer(t, 2, 64)
		hostile := s.dial(t, "hostile")
		answers := signAll(t.Context(), hostile, 24, csr)
		refused := collect(t, answers, 24-maxSignPerNode)
		if refused[codes.ResourceExhausted] != 24-maxSignPerNode {
			t.Fatalf("one node beyond its share: %v, want %d ResourceExhausted", refused, 24-maxSignPerNode)
		}
		other := signAll(t.Context(), s.dial(t, "other"), 1, csr)
		// The other node's CSR is admitted and waits its turn (a
		// refusal would answer ResourceExhausted).
		s.sig.waitSigning(t, 2)
		close(s.sig.release)
		if c := collect(t, other, 1); c[codes.OK] != 1 {
			t.Fatalf("another node's CSR while one node held its share: %v, want OK", c)
		}
		rest := collect(t, answers, maxSignPerNode)
		t.Logf("24 CSRs at once from one node, queue 64: %d admitted (its share), %d refused; another node's CSR signed", rest[codes.OK], refused[codes.ResourceExhausted])
		if rest[codes.OK] != maxSignPerNode {
			t.Fatalf("admitted CSRs of the hostile node: %v, want %d OK", rest, maxSignPerNode)
		}
	})
}

// waitStats waits until the server's counters satisfy ok (which may look
// at the server's state too).
func waitStats(t *testing.T, s *Server, ok func(Stats) bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for !ok(s.Stats()) {
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatalf("counters %+v never got there", s.Stats())
		}
	}
}
