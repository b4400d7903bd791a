package workload_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"log/slog"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/testkit"
	wl "github.com/meshca/meshca/internal/workload"
	"github.com/meshca/meshca/internal/workload/attest"
)

const timeout = 20 * time.Second

var td = spiffeid.RequireTrustDomainFromString("example.org")

// source is a Source the test changes by hand.
type source struct {
	mu sync.Mutex
	st wl.State
	ch chan struct{}
}

func newSource(st wl.State) *source { return &source{st: st, ch: make(chan struct{})} }

func (s *source) Current() (wl.State, <-chan struct{}) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st, s.ch
}

func (s *source) Set(st wl.State) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st = st
	close(s.ch)
	s.ch = make(chan struct{})
}

var _ wl.Source = (*source)(nil)

// svid issues an X.509-SVID for path in td from ca.
func svid(t *testing.T, ca *testkit.CA, path string, selectors ...string) wl.SVID {
	t.Helper()
	id := spiffeid.RequireFromPath(td, path)
	u, _ := url.Parse(id.String())
	key := testkit.Key(t)
	now := time.Now()
	leaf := ca.Sign(t, &x509.Certificate{
		SerialNumber: testkit.Serial(t), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
		URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}, key.Public())
	return wl.SVID{SPIFFEID: id.String(), CertChain: [][]byte{leaf.Raw}, Key: key, Selectors: selectors}
}

func crl(t *testing.T, ca *testkit.CA, n int64) []byte {
	t.Helper()
	now := time.Now()
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		Number: big.NewInt(n), ThisUpdate: now, NextUpdate: now.Add(time.Hour),
		RevokedCertificateEntries: []x509.RevocationListEntry{{SerialNumber: big.NewInt(n), RevocationTime: now}},
	}, ca.Cert, ca.Key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// serve runs a Server on a Unix socket in a temp dir and returns its
// address for go-spiffe ("unix://...").
func serve(t *testing.T, src wl.Source, gate *attest.Gate) string {
	t.Helper()
	return serveAt(t, filepath.Join(t.TempDir(), "w.sock"), wl.Config{Source: src, Gate: gate})
}

// serveAt is serve on the socket path.
func serveAt(t *testing.T, path string, cfg wl.Config) string {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Logger = testkit.Logger(t)
	srv, err := wl.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(timeout):
			t.Error("Serve did not return after its context ended")
		}
	})
	return "unix://" + path
}

func rawClient(t *testing.T, addr string) workload.SpiffeWorkloadAPIClient {
	t.Helper()
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return workload.NewSpiffeWorkloadAPIClient(cc)
}

func withHeader(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, wl.Header, "true")
}

func self(t *testing.T) peercred.Caller {
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return peercred.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid()), Path: exe}
}

// TestX509SourceFollowsRotationAndBundle: go-spiffe's X509Source gets the
// SVID meant for this process (by uid and executable), not the one meant
// for another uid, then sees a rotated SVID and a bundle with a second
// root, each pushed without asking.
func TestX509SourceFollowsRotationAndBundle(t *testing.T) {
	me := self(t)
	root := testkit.NewCA(t, pkix.Name{CommonName: "root 1"}, time.Now().Add(24*time.Hour), nil)
	web := svid(t, root, "/web", "uid:"+itoa(me.UID), "path:"+me.Path)
	other := svid(t, root, "/db", "uid:"+itoa(me.UID+1))
	src := newSource(wl.State{TrustDomain: td, SVIDs: []wl.SVID{other, web}, Bundle: []*x509.Certificate{root.Cert}, CRLs: [][]byte{crl(t, root, 1)}})
	addr := serve(t, src, nil)

	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	xs, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		t.Fatalf("X509Source: %v", err)
	}
	defer xs.Close()
	got, err := xs.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID.String() != web.SPIFFEID || got.Certificates[0].SerialNumber.Cmp(leaf(t, web).SerialNumber) != 0 {
		t.Fatalf("SVID = %s serial %s, want %s serial %s", got.ID, got.Certificates[0].SerialNumber, web.SPIFFEID, leaf(t, web).SerialNumber)
	}
	svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
	if err != nil || len(svids) != 1 {
		t.Fatalf("FetchX509SVIDs = %d SVIDs, %v; want only %s (the other is for another uid)", len(svids), err, web.SPIFFEID)
	}

	// Rotation: a new certificate and key for the same identity.
	rotated := svid(t, root, "/web", web.Selectors...)
	start := time.Now()
	src.Set(wl.State{TrustDomain: td, SVIDs: []wl.SVID{other, rotated}, Bundle: []*x509.Certificate{root.Cert}})
	waitFor(ctx, t, xs, "the rotated SVID", func() bool {
		s, err := xs.GetX509SVID()
		return err == nil && s.Certificates[0].SerialNumber.Cmp(leaf(t, rotated).SerialNumber) == 0
	})
	t.Logf("rotated SVID reached go-spiffe's X509Source %s after the source changed", time.Since(start).Round(time.Microsecond))

	// Root rotation: the bundle gains a second root.
	root2 := testkit.NewCA(t, pkix.Name{CommonName: "root 2"}, time.Now().Add(24*time.Hour), nil)
	start = time.Now()
	src.Set(wl.State{TrustDomain: td, SVIDs: []wl.SVID{other, rotated}, Bundle: []*x509.Certificate{root.Cert, root2.Cert}})
	waitFor(ctx, t, xs, "the bundle with two roots", func() bool {
		b, err := xs.GetX509BundleForTrustDomain(td)
		return err == nil && b.HasX509Authority(root2.Cert) && b.HasX509Authority(root.Cert)
	})
	t.Logf("new root reached go-spiffe's X509Source %s after the source changed", time.Since(start).Round(time.Microsecond))
}

func itoa(n uint32) string { return big.NewInt(int64(n)).String() }

func leaf(t *testing.T, s wl.SVID) *x509.Certificate {
	t.Helper()
	c, err := x509.ParseCertificate(s.CertChain[0])
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// waitFor waits for ok, re-checking on every update of xs.
func waitFor(ctx context.Context, t *testing.T, xs *workloadapi.X509Source, what string, ok func() bool) {
	t.Helper()
	for !ok() {
		select {
		case <-xs.Updated():
		case <-ctx.Done():
			t.Fatalf("X509Source never saw %s", what)
		}
	}
}

// TestStreamsCarryCRLs: both streams fill the crl field, and a new CRL is
// pushed on the open streams.
func TestStreamsCarryCRLs(t *testing.T) {
	me := self(t)
	root := testkit.NewCA(t, pkix.Name{CommonName: "root"}, time.Now().Add(24*time.Hour), nil)
	web := svid(t, root, "/web", "uid:"+itoa(me.UID))
	crl1, crl2 := crl(t, root, 1), crl(t, root, 2)
	src := newSource(wl.State{TrustDomain: td, SVIDs: []wl.SVID{web}, Bundle: []*x509.Certificate{root.Cert}, CRLs: [][]byte{crl1}})
	c := rawClient(t, serve(t, src, nil))
	ctx, cancel := context.WithTimeout(withHeader(context.Background()), timeout)
	defer cancel()
	svids, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	bundles, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	check := func(want []byte) {
		t.Helper()
		m, err := svids.Recv()
		if err != nil {
			t.Fatalf("FetchX509SVID: %v", err)
		}
		if len(m.Crl) != 1 || string(m.Crl[0]) != string(want) || len(m.Svids) != 1 || string(m.Svids[0].Bundle) != string(root.Cert.Raw) {
			t.Fatalf("X509SVIDResponse: %d CRLs (want the current one), %d SVIDs", len(m.Crl), len(m.Svids))
		}
		b, err := bundles.Recv()
		if err != nil {
			t.Fatalf("FetchX509Bundles: %v", err)
		}
		if len(b.Crl) != 1 || string(b.Crl[0]) != string(want) || string(b.Bundles[td.IDString()]) != string(root.Cert.Raw) {
			t.Fatalf("X509BundlesResponse: %d CRLs (want the current one), bundles for %d trust domains", len(b.Crl), len(b.Bundles))
		}
	}
	check(crl1)
	src.Set(wl.State{TrustDomain: td, SVIDs: []wl.SVID{web}, Bundle: []*x509.Certificate{root.Cert}, CRLs: [][]byte{crl2}})
	check(crl2)
}

// TestRefusals: no header, another uid, JWT methods, a TCP client.
func TestRefusals(t *testing.T) {
	me := self(t)
	root := testkit.NewCA(t, pkix.Name{CommonName: "root"}, time.Now().Add(24*time.Hour), nil)
	type denial struct {
		c      peercred.Caller
		reason string
	}
	denied := make(chan denial, 16)
	// The only SVID is for another uid.
	src := newSource(wl.State{TrustDomain: td, SVIDs: []wl.SVID{svid(t, root, "/db", "uid:"+itoa(me.UID+1))}, Bundle: []*x509.Certificate{root.Cert}})
	addr := serveAt(t, filepath.Join(t.TempDir(), "w.sock"), wl.Config{Source: src, Denied: func(c peercred.Caller, reason string) {
		denied <- denial{c, reason}
	}})
	c := rawClient(t, addr)

	t.Run("no header", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("FetchX509SVID without %s: err = %v, want InvalidArgument", wl.Header, err)
		}
		b, err := c.FetchX509Bundles(ctx, &workload.X509BundlesRequest{})
		if err == nil {
			_, err = b.Recv()
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("FetchX509Bundles without %s: err = %v, want InvalidArgument", wl.Header, err)
		}
	})

	t.Run("another uid", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		_, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("go-spiffe FetchX509SVID as uid %d: err = %v, want PermissionDenied", me.UID, err)
		}
		select {
		case d := <-denied:
			if d.c != me {
				t.Fatalf("denied caller = %v, want %v", d.c, me)
			}
			t.Logf("refused: %v: %s", d.c, d.reason)
		case <-ctx.Done():
			t.Fatal("the Denied hook did not fire")
		}
		_, err = workloadapi.FetchX509Bundles(ctx, workloadapi.WithAddr(addr))
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("go-spiffe FetchX509Bundles as uid %d: err = %v, want PermissionDenied", me.UID, err)
		}
		<-denied
	})

	t.Run("jwt", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(withHeader(context.Background()), timeout)
		defer cancel()
		_, err := c.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"x"}})
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("FetchJWTSVID: err = %v, want Unimplemented", err)
		}
		t.Logf("FetchJWTSVID: %s", status.Convert(err).Message())
		if _, err := c.ValidateJWTSVID(ctx, &workload.ValidateJWTSVIDRequest{Audience: "x", Svid: "y"}); status.Code(err) != codes.Unimplemented {
			t.Fatalf("ValidateJWTSVID: err = %v, want Unimplemented", err)
		}
		s, err := c.FetchJWTBundles(ctx, &workload.JWTBundlesRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		if status.Code(err) != codes.Unimplemented {
			t.Fatalf("FetchJWTBundles: err = %v, want Unimplemented", err)
		}
		w, err := c.FetchWITSVID(ctx, &workload.WITSVIDRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		if status.Code(err) != codes.Unimplemented || !strings.Contains(status.Convert(err).Message(), "X.509-SVIDs only") {
			t.Fatalf("FetchWITSVID: err = %v, want Unimplemented saying what is served", err)
		}
	})

	t.Run("source change ends a stream that no longer matches", func(t *testing.T) {
		web := svid(t, root, "/web")
		src.Set(wl.State{TrustDomain: td, SVIDs: []wl.SVID{web}, Bundle: []*x509.Certificate{root.Cert}})
		ctx, cancel := context.WithTimeout(withHeader(context.Background()), timeout)
		defer cancel()
		s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if m, err := s.Recv(); err != nil || len(m.Svids) != 1 {
			t.Fatalf("an SVID without selectors: %v", err)
		}
		src.Set(wl.State{TrustDomain: td, SVIDs: []wl.SVID{svid(t, root, "/web", "uid:"+itoa(me.UID+1))}, Bundle: []*x509.Certificate{root.Cert}})
		if _, err := s.Recv(); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("after the assignment changed to another uid: err = %v, want PermissionDenied", err)
		}
		<-denied
	})
}

// TestTCPClientRefused: the API served on anything but a Unix socket
// identifies nobody, and refuses everybody.
func TestTCPClientRefused(t *testing.T) {
	root := testkit.NewCA(t, pkix.Name{CommonName: "root"}, time.Now().Add(24*time.Hour), nil)
	srv, err := wl.New(wl.Config{Source: newSource(wl.State{TrustDomain: td, SVIDs: []wl.SVID{svid(t, root, "/web")}, Bundle: []*x509.Certificate{root.Cert}})})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, l) }()
	defer func() { cancel(); <-done }()
	_, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr("tcp://"+l.Addr().String()))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("a TCP client: err = %v, want Unavailable (the handshake is refused)", err)
	}
	t.Logf("TCP client: %v", err)
}

// TestRefusedFloodHoldsNothing: a local process refused in a loop (no
// header, or no matching SVID) is reported every time, logged a bounded
// number of times, and leaves no goroutine behind on the server.
func TestRefusedFloodHoldsNothing(t *testing.T) {
	me := self(t)
	root := testkit.NewCA(t, pkix.Name{CommonName: "root"}, time.Now().Add(24*time.Hour), nil)
	var (
		mu     sync.Mutex
		hooks  int
		logged int
	)
	logger := slog.New(countHandler{n: &logged, mu: &mu})
	gate := attest.NewGate(attest.GateConfig{Logger: logger, Denied: func(peercred.Caller, string) {
		mu.Lock()
		hooks++
		mu.Unlock()
	}})
	src := newSource(wl.State{TrustDomain: td, SVIDs: []wl.SVID{svid(t, root, "/db", "uid:"+itoa(me.UID+1))}, Bundle: []*x509.Certificate{root.Cert}})
	addr := serve(t, src, gate)
	c := rawClient(t, addr)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// Warm the connection so the baseline includes its goroutines.
	if s, err := c.FetchX509SVID(ctx, &workload.X509SVIDRequest{}); err == nil {
		_, _ = s.Recv()
	}
	base := runtime.NumGoroutine()
	const calls = 300
	start := time.Now()
	for i := range calls {
		cctx := ctx
		if i%2 == 0 {
			cctx = withHeader(ctx)
		}
		s, err := c.FetchX509SVID(cctx, &workload.X509SVIDRequest{})
		if err == nil {
			_, err = s.Recv()
		}
		want := codes.InvalidArgument
		if i%2 == 0 {
			want = codes.PermissionDenied
		}
		if status.Code(err) != want {
			t.Fatalf("call %d: err = %v, want %v", i, err, want)
		}
	}
	took := time.Since(start)
	// The server's stream goroutines end after the answers; wait for it.
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for runtime.NumGoroutine() > base+2 {
		select {
		case <-tick.C:
		case <-ctx.Done():
			t.Fatalf("goroutines: %d after the flood, %d before", runtime.NumGoroutine(), base)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if hooks != calls/2 || logged > 10 {
		t.Fatalf("%d refusals for lack of a matching SVID: hook called %d times (want each), %d log records (want at most 10)", calls/2, hooks, logged)
	}
	t.Logf("%d refused calls in %s (%.0f/s): %d reported to the hook, %d log records, goroutines %d -> %d",
		calls, took.Round(time.Millisecond), calls/took.Seconds(), hooks, logged, base, runtime.NumGoroutine())
}

// countHandler counts records.
type countHandler struct {
	mu *sync.Mutex
	n  *int
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(context.Context, slog.Record) error {
	h.mu.Lock()
	*h.n++
	h.mu.Unlock()
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// opaqueSigner is a key that cannot leave its holder, like one in
// hardware: x509.MarshalPKCS8PrivateKey does not know it.
type opaqueSigner struct{ crypto.Signer }

// TestUnencodableKeyLeftOut: an SVID whose key cannot be encoded is left
// out of the answer; with nothing left the caller is told to retry
// (Unavailable), not refused.
func TestUnencodableKeyLeftOut(t *testing.T) {
	root := testkit.NewCA(t, pkix.Name{CommonName: "root"}, time.Now().Add(24*time.Hour), nil)
	hw := svid(t, root, "/hw")
	hw.Key = opaqueSigner{hw.Key}
	web := svid(t, root, "/web")
	src := newSource(wl.State{TrustDomain: td, SVIDs: []wl.SVID{hw, web}, Bundle: []*x509.Certificate{root.Cert}})
	addr := serve(t, src, nil)
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr(addr))
	if err != nil || len(svids) != 1 || svids[0].ID.String() != web.SPIFFEID {
		t.Fatalf("FetchX509SVIDs = %d SVIDs, %v; want only %s", len(svids), err, web.SPIFFEID)
	}
	src.Set(wl.State{TrustDomain: td, SVIDs: []wl.SVID{hw}, Bundle: []*x509.Certificate{root.Cert}})
	if _, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(addr)); status.Code(err) != codes.Unavailable {
		t.Fatalf("only an unencodable key: err = %v, want Unavailable", err)
	}
}
