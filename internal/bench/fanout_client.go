package bench

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

// Names a sidecar of the seeded trust domain uses.
const (
	// ServerID is the SPIFFE ID a node verifies meshca's xDS server by, as
	// the Envoy bootstrap does (match_typed_subject_alt_names): the server
	// has no host name.
	ServerID = "spiffe://" + TrustDomain + "/meshca"
	// BundleSecret is the name of the trust bundle secret (sds.BundleName).
	BundleSecret = "spiffe://" + TrustDomain
)

// Kinds of change the xds-clients worker can wait for ("watch KIND").
const (
	WatchBundle   = "bundle"   // a trust bundle holding a root the stream did not have
	WatchIdentity = "identity" // an identity secret with another leaf certificate
	WatchAny      = "any"      // any response with another version
)

// firstResponseTimeout bounds the wait for a stream's first response.
const firstResponseTimeout = 2 * time.Minute

// gcHeadroom is how far the xds-clients worker may grow once connected
// before it collects garbage.
const gcHeadroom = 4 << 30

// workXDSClients is the xds-clients worker: one Envoy sidecar per node of a
// WriteNodes file. Each node gets its own TLS connection, made with its node
// certificate and checking the server against the bundle file by ServerID,
// and one ADS stream on it that asks for the trust bundle secret (and with
// -identity the node's identity secret too, in the same request, as Envoy's
// ADS mux does) and ACKs every response with its version and nonce.
//
// Flags: -nodes FILE -bundle FILE -addr HOST:PORT [-identity] [-dial N].
// It prints "ready N" once every stream has ACKed its first response. Then:
//
//	watch KIND  answers "armed" once every stream's current state is noted,
//	            then "done last=NS p50=NS n=N responses=R most=M" when every stream
//	            has received a change of KIND (bundle, identity, any): the
//	            Unix times in nanoseconds at which the last stream and the
//	            median stream received theirs, how many streams were waited
//	            for, how many responses all streams received meanwhile, and
//	            the most one stream received up to and with its change.
//
// A stream that fails is reported once as "error ...". Closing stdin stops it.
func workXDSClients(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("xds-clients", flag.ContinueOnError)
	nodesFile := fs.String("nodes", "", "nodes (WriteNodes JSON lines)")
	bundleFile := fs.String("bundle", "", "PEM roots to verify the server with")
	addr := fs.String("addr", "", "xDS server host:port")
	withIdentity := fs.Bool("identity", false, "also subscribe to each node's identity secret")
	dial := fs.Int("dial", 32, "connections being set up at once")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodesFile == "" || *bundleFile == "" || *addr == "" || *dial < 1 {
		return errors.New("xds-clients: -nodes, -bundle and -addr are required")
	}
	nodes, roots, err := readClientInputs("xds-clients", *nodesFile, *bundleFile)
	if err != nil {
		return err
	}
	if err := raiseFileLimit(len(nodes) + 64); err != nil {
		return err
	}
	ctx, cmds := commands(ctx, in)
	w := &lines{w: out}
	c := &xdsClients{out: w, streams: make([]*clientStream, len(nodes))}
	for i, n := range nodes {
		s := &clientStream{node: n, names: []string{BundleSecret}}
		if *withIdentity && n.Identity != "" {
			s.names = append(s.names, n.Identity)
		}
		c.streams[i] = s
	}
	if err := c.connect(ctx, *addr, roots, *dial); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		w.Printf("error %v", err)
		return err
	}
	// Thousands of sidecars do not share one garbage collector: once
	// connected, this process collects only near a memory limit, so that
	// collections over every connection's buffers do not take CPU from the
	// server under test while it pushes.
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	debug.SetMemoryLimit(int64(ms.Sys) + gcHeadroom)
	debug.SetGCPercent(-1)
	w.Printf("ready %d", len(nodes))
	for {
		select {
		case <-ctx.Done():
			return nil
		case cmd := <-cmds:
			verb, arg, _ := strings.Cut(cmd, " ")
			switch verb {
			case "watch":
				if err := c.watch(strings.TrimSpace(arg)); err != nil {
					w.Printf("error %v", err)
				}
			default:
				w.Printf("error unknown command %q", cmd)
			}
		}
	}
}

// xdsClients is the state of the xds-clients worker.
type xdsClients struct {
	out       *lines
	streams   []*clientStream
	failed    atomic.Bool
	responses atomic.Int64 // received by all streams since the last watch began
}

// clientStream is one node's connection and ADS stream.
type clientStream struct {
	node  SeedNode
	names []string // secrets it asks for

	mu   sync.Mutex
	held held
	// since counts the responses received since the current watch began.
	since atomic.Int64
	base  held   // held when the current watch began
	w     *watch // the watch this stream has yet to satisfy
}

// held is what a stream last received.
type held struct {
	version string
	roots   map[string]bool // DER of the bundle's certificates; replaced, never changed
	leaf    string          // DER of the identity's leaf certificate
}

// connect opens every node's stream, at most dial at a time, and returns
// once each has ACKed its first response.
func (c *xdsClients) connect(ctx context.Context, addr string, roots *x509.CertPool, dial int) error {
	var (
		sem    = make(chan struct{}, dial)
		wg     sync.WaitGroup
		once   sync.Once
		first  error
		failed atomic.Bool
	)
	for _, s := range c.streams {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if ctx.Err() != nil || failed.Load() {
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := c.open(ctx, s, addr, roots, func() { <-sem }); err != nil {
				once.Do(func() { first = fmt.Errorf("%s: %w", s.node.Name, err) })
				failed.Store(true)
			}
		}()
	}
	wg.Wait()
	if first != nil {
		return first
	}
	return ctx.Err()
}

// open dials one node, subscribes, waits for the first response and ACKs
// it, calls opened, and keeps the stream for the worker's life.
func (c *xdsClients) open(ctx context.Context, s *clientStream, addr string, roots *x509.CertPool, opened func()) error {
	released := false
	release := func() {
		if !released {
			released = true
			opened()
		}
	}
	defer release()
	cert, err := tls.X509KeyPair([]byte(s.node.ChainPEM), []byte(s.node.KeyPEM))
	if err != nil {
		return fmt.Errorf("node credentials: %w", err)
	}
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(credentials.NewTLS(sidecarTLS(cert, roots))),
		grpc.WithSharedWriteBuffer(true))
	if err != nil {
		return err
	}
	// The connection lives until the worker ends.
	context.AfterFunc(ctx, func() { conn.Close() })
	sctx, cancel := context.WithCancel(ctx)
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		cancel()
		return err
	}
	// Envoy names the node on the first request only.
	if err := ads.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: s.node.Name}, TypeUrl: resource.SecretType, ResourceNames: s.names}); err != nil {
		cancel()
		return err
	}
	timer := time.AfterFunc(firstResponseTimeout, cancel)
	resp, err := ads.Recv()
	if !timer.Stop() {
		err = fmt.Errorf("no first response within %s", firstResponseTimeout)
	}
	if err == nil {
		err = c.receive(s, ads, resp)
	}
	if err != nil {
		cancel()
		return err
	}
	release()
	go func() {
		defer cancel()
		for {
			resp, err := ads.Recv()
			if err == nil {
				err = c.receive(s, ads, resp)
			}
			if err != nil {
				if ctx.Err() == nil && !c.failed.Swap(true) {
					c.out.Printf("error %s: stream ended: %v", s.node.Name, err)
				}
				return
			}
		}
	}()
	return nil
}

// sidecarTLS is a node's TLS configuration as its Envoy bootstrap sets it:
// TLS 1.3, the node certificate, and the server checked against the bundle
// by its SPIFFE ID rather than a host name.
func sidecarTLS(cert tls.Certificate, roots *x509.CertPool) *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{cert},
		// Verification is done below: by SPIFFE ID, not host name.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("server sent no certificate")
			}
			inter := x509.NewCertPool()
			var leaf *x509.Certificate
			for i, der := range raw {
				c, err := x509.ParseCertificate(der)
				if err != nil {
					return err
				}
				if i == 0 {
					leaf = c
				} else {
					inter.AddCert(c)
				}
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter}); err != nil {
				return err
			}
			if len(leaf.URIs) != 1 || leaf.URIs[0].String() != ServerID {
				return fmt.Errorf("server is not %s", ServerID)
			}
			return nil
		},
	}
}

// receive records a response, settles the stream's watch if the response
// brings the change it waits for, and ACKs it.
func (c *xdsClients) receive(s *clientStream, ads discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, resp *discovery.DiscoveryResponse) error {
	at := time.Now()
	c.responses.Add(1)
	s.since.Add(1)
	next, err := s.decode(resp)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.held = next
	w := s.w
	if w != nil && w.changed(s.base, next) {
		s.w = nil
	} else {
		w = nil
	}
	s.mu.Unlock()
	if w != nil {
		c.settled(w, at, s.since.Load())
	}
	return ads.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce(), ResourceNames: s.names})
}

// decode reads the secrets of a response on top of what the stream held.
func (s *clientStream) decode(resp *discovery.DiscoveryResponse) (held, error) {
	s.mu.Lock()
	next := s.held
	s.mu.Unlock()
	next.version = resp.GetVersionInfo()
	for _, a := range resp.GetResources() {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			return held{}, fmt.Errorf("response holds no secret: %w", err)
		}
		switch {
		case sec.GetName() == BundleSecret:
			next.roots = map[string]bool{}
			for _, der := range pemBlocks(sec.GetValidationContext().GetTrustedCa().GetInlineBytes()) {
				next.roots[string(der)] = true
			}
			if len(next.roots) == 0 {
				return held{}, errors.New("trust bundle secret holds no certificate")
			}
		case len(s.names) > 1 && sec.GetName() == s.names[1]:
			chain := pemBlocks(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
			if len(chain) == 0 || len(sec.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) == 0 {
				return held{}, fmt.Errorf("identity secret %s lacks its chain or key", sec.GetName())
			}
			next.leaf = string(chain[0])
		default:
			return held{}, fmt.Errorf("secret %q was not asked for", sec.GetName())
		}
	}
	return next, nil
}

// pemBlocks returns the DER of every PEM block in data.
func pemBlocks(data []byte) [][]byte {
	var out [][]byte
	for {
		var b *pem.Block
		b, data = pem.Decode(data)
		if b == nil {
			return out
		}
		out = append(out, b.Bytes)
	}
}

// watch is one "watch" command: the streams left to see a change.
type watch struct {
	kind    string
	pending atomic.Int64

	mu    sync.Mutex
	times []time.Time
	most  int64 // the most responses one stream took to see the change
}

// changed reports whether now differs from base in the way w waits for.
func (w *watch) changed(base, now held) bool {
	switch w.kind {
	case WatchBundle:
		for r := range now.roots {
			if !base.roots[r] {
				return true
			}
		}
		return false
	case WatchIdentity:
		return now.leaf != "" && now.leaf != base.leaf
	default:
		return now.version != base.version
	}
}

// watch notes every stream's state and arms a watch of kind.
func (c *xdsClients) watch(kind string) error {
	switch kind {
	case WatchBundle, WatchIdentity, WatchAny:
	default:
		return fmt.Errorf("watch %q: want %s, %s or %s", kind, WatchBundle, WatchIdentity, WatchAny)
	}
	w := &watch{kind: kind}
	var waiting []*clientStream
	for _, s := range c.streams {
		if kind != WatchIdentity || len(s.names) > 1 {
			waiting = append(waiting, s)
		}
	}
	// Counted before any stream is armed, so that no early arrival can
	// bring the count to zero while others are still being armed.
	w.pending.Store(int64(len(waiting)))
	c.responses.Store(0)
	for _, s := range waiting {
		s.mu.Lock()
		s.base, s.w = s.held, w
		s.since.Store(0)
		s.mu.Unlock()
	}
	c.out.Printf("armed %d", len(waiting))
	if len(waiting) == 0 {
		c.out.Printf("done last=0 p50=0 n=0 responses=0 most=0")
	}
	return nil
}

// settled records that one stream saw w's change at at, and reports the
// watch done after the last one.
func (c *xdsClients) settled(w *watch, at time.Time, responses int64) {
	w.mu.Lock()
	w.times = append(w.times, at)
	w.most = max(w.most, responses)
	w.mu.Unlock()
	if w.pending.Add(-1) != 0 {
		return
	}
	w.mu.Lock()
	times, most := slices.Clone(w.times), w.most
	w.mu.Unlock()
	slices.SortFunc(times, func(a, b time.Time) int { return a.Compare(b) })
	c.out.Printf("done last=%d p50=%d n=%d responses=%d most=%d", times[len(times)-1].UnixNano(), times[len(times)/2].UnixNano(), len(times), c.responses.Load(), most)
}

// lines writes whole lines to a worker's stdout from many goroutines.
type lines struct {
	mu sync.Mutex
	w  io.Writer
}

// Printf writes one line.
func (l *lines) Printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format+"\n", args...)
}

// commands reads a worker's command lines from in. The returned context
// ends when in closes (the parent is done with the worker) or ctx does.
func commands(ctx context.Context, in io.Reader) (context.Context, <-chan string) {
	ctx, cancel := context.WithCancel(ctx)
	cmds := make(chan string, 16)
	go func() {
		defer cancel()
		sc := bufio.NewScanner(in)
		for sc.Scan() {
			select {
			case cmds <- strings.TrimSpace(sc.Text()):
			case <-ctx.Done():
				return
			}
		}
	}()
	return ctx, cmds
}

// raiseFileLimit raises the soft limit on open files to the hard limit
// when need is above it, and fails when even the hard limit is too low.
func raiseFileLimit(need int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= uint64(need) {
		return nil
	}
	if lim.Max < uint64(need) {
		return fmt.Errorf("%d connections need %d open files; the hard limit is %d (raise ulimit -n)", need-64, need, lim.Max)
	}
	lim.Cur = lim.Max
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}

// readClientInputs reads a client worker's nodes and the roots it verifies
// the servers with.
func readClientInputs(worker, nodesFile, bundleFile string) ([]SeedNode, *x509.CertPool, error) {
	nodes, err := ReadNodes(nodesFile)
	if err != nil {
		return nil, nil, err
	}
	bundle, err := os.ReadFile(bundleFile)
	if err != nil {
		return nil, nil, err
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundle) {
		return nil, nil, fmt.Errorf("%s: no certificate in %s", worker, bundleFile)
	}
	return nodes, roots, nil
}
