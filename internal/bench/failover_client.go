package bench

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// workFailoverClients is the failover-clients worker: one sidecar per node
// of a WriteNodes file, as in xds-clients (own node certificate, one ADS
// stream asking for the bundle and the node's identity secret, every
// response ACKed), but each node knows every server of -addrs, as an Envoy
// bootstrap listing every replica does, and keeps a stream open to one of
// them. All start on the first. A stream that ends is opened again at once
// on the next server; after a whole round of servers failed the node waits
// a jittered exponential backoff (-backoff, doubling up to 1 s) before the
// next round. With -spread (the default) each node connects from its own
// loopback address (127.1.x.y), as nodes on their own hosts would, so that
// per-address limits see one node per address.
//
// It prints "ready N" once every stream has ACKed its first response from
// the first server. Then:
//
//	failover  notes what every stream holds and answers "armed N"; once
//	          every stream has lost its server and has been served again by
//	          another one with exactly what it held (the same trust bundle
//	          and identity certificate: nothing changed meanwhile), it
//	          prints "done first_lost=NS last_lost=NS last=NS p50=NS
//	          p99=NS attempts=A failed=F": Unix times in nanoseconds of the
//	          first and last stream ending and of the last stream current
//	          again, each node's time from its stream ending to current
//	          again (median, 99th percentile), the connections tried since
//	          the failover began and those that got no response; then
//	          "failures N× WHY | ..." saying why those got none.
//
// A node served something else than it held is reported as "error ...".
// Closing stdin stops the worker.
func workFailoverClients(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("failover-clients", flag.ContinueOnError)
	nodesFile := fs.String("nodes", "", "nodes (WriteNodes JSON lines)")
	bundleFile := fs.String("bundle", "", "PEM roots to verify the servers with")
	addrs := fs.String("addrs", "", "xDS servers HOST:PORT,HOST:PORT...")
	dial := fs.Int("dial", 32, "connections being set up at once at the start")
	backoff := fs.Duration("backoff", 100*time.Millisecond, "base of the jittered backoff after a round of failed servers")
	spread := fs.Bool("spread", true, "connect each node from its own loopback address")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodesFile == "" || *bundleFile == "" || *addrs == "" || *dial < 1 {
		return errors.New("failover-clients: -nodes, -bundle and -addrs are required")
	}
	nodes, roots, err := readClientInputs("failover-clients", *nodesFile, *bundleFile)
	if err != nil {
		return err
	}
	if err := raiseFileLimit(2*len(nodes) + 64); err != nil {
		return err
	}
	ctx, cmds := commands(ctx, in)
	c := &failoverClients{out: &lines{w: out}, addrs: strings.Split(*addrs, ","), roots: roots, backoff: *backoff, spread: *spread}
	for i, n := range nodes {
		s := &foStream{idx: i, first: make(chan struct{})}
		s.node, s.names = n, []string{BundleSecret}
		if n.Identity != "" {
			s.names = append(s.names, n.Identity)
		}
		c.streams = append(c.streams, s)
	}
	if err := c.start(ctx, *dial); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		c.out.Printf("error %v", err)
		return err
	}
	c.out.Printf("ready %d", len(nodes))
	for {
		select {
		case <-ctx.Done():
			return nil
		case cmd := <-cmds:
			switch cmd {
			case "failover":
				c.arm()
			default:
				c.out.Printf("error unknown command %q", cmd)
			}
		}
	}
}

// failoverClients is the state of the failover-clients worker.
type failoverClients struct {
	out     *lines
	addrs   []string
	roots   *x509.CertPool
	backoff time.Duration
	spread  bool
	streams []*foStream

	armed    atomic.Bool
	pending  atomic.Int64
	attempts atomic.Int64 // connections tried since armed
	failed   atomic.Int64 // of which got no response
	reported atomic.Bool  // an error was printed

	mu       sync.Mutex
	failures map[string]int // why connections tried since armed got no response
}

// foStream is one node and the stream it keeps to some server.
type foStream struct {
	clientStream
	idx int

	first chan struct{} // closed at the stream's first response

	// Under clientStream.mu.
	server        string    // the server that last answered
	lost, current time.Time // while armed: when the stream ended, when it was current again
}

// start opens every node's stream on the first server, dial at a time, and
// returns once each has ACKed its first response; the streams then live
// until ctx ends.
func (c *failoverClients) start(ctx context.Context, dial int) error {
	sem := make(chan struct{}, dial)
	for _, s := range c.streams {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			return ctx.Err()
		}
		go c.run(ctx, s)
		go func() {
			defer func() { <-sem }()
			select {
			case <-s.first:
			case <-ctx.Done():
			case <-time.After(firstResponseTimeout):
			}
		}()
	}
	for _, s := range c.streams {
		select {
		case <-s.first:
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(firstResponseTimeout):
			return fmt.Errorf("%s: no response from %s within %s", s.node.Name, c.addrs[0], firstResponseTimeout)
		}
	}
	return nil
}

// run keeps s connected to one of the servers until ctx ends.
func (c *failoverClients) run(ctx context.Context, s *foStream) {
	next, failedRounds, failures := 0, 0, 0
	for ctx.Err() == nil {
		addr := c.addrs[next%len(c.addrs)]
		next++
		if c.armed.Load() {
			c.attempts.Add(1)
		}
		served, err := c.session(ctx, s, addr)
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		if c.armed.Load() && s.lost.IsZero() && s.server != "" {
			s.lost = time.Now()
		}
		s.mu.Unlock()
		if served {
			failures, failedRounds = 0, 0
			continue
		}
		if c.armed.Load() {
			c.failed.Add(1)
			c.noteFailure(err)
		}
		if failures++; failures%len(c.addrs) != 0 {
			continue
		}
		// A whole round failed: back off, jittered, before the next.
		limit := min(c.backoff<<min(failedRounds, 10), time.Second)
		failedRounds++
		select {
		case <-ctx.Done():
		case <-time.After(rand.N(limit) + time.Millisecond):
		}
	}
}

// session opens one connection and ADS stream to addr and receives on it
// until it ends; served reports whether any response came.
func (c *failoverClients) session(ctx context.Context, s *foStream, addr string) (served bool, err error) {
	cert, err := tls.X509KeyPair([]byte(s.node.ChainPEM), []byte(s.node.KeyPEM))
	if err != nil {
		return false, err
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(credentials.NewTLS(sidecarTLS(cert, c.roots))), grpc.WithSharedWriteBuffer(true)}
	if c.spread {
		local := &net.TCPAddr{IP: net.IPv4(127, 1, byte(s.idx>>8), byte(s.idx))}
		opts = append(opts, grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			d := net.Dialer{LocalAddr: local}
			return d.DialContext(ctx, "tcp", addr)
		}))
	}
	conn, err := grpc.NewClient("passthrough:///"+addr, opts...)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(sctx)
	if err != nil {
		return false, err
	}
	if err := ads.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: s.node.Name}, TypeUrl: resource.SecretType, ResourceNames: s.names}); err != nil {
		return false, err
	}
	timer := time.AfterFunc(firstResponseTimeout, cancel)
	defer timer.Stop()
	for {
		resp, err := ads.Recv()
		if err != nil {
			return served, err
		}
		timer.Stop()
		served = true
		if err := c.receive(s, addr, resp); err != nil {
			if !c.reported.Swap(true) {
				c.out.Printf("error %s: %v", s.node.Name, err)
			}
			return served, err
		}
		if err := ads.Send(&discovery.DiscoveryRequest{TypeUrl: resource.SecretType, VersionInfo: resp.GetVersionInfo(),
			ResponseNonce: resp.GetNonce(), ResourceNames: s.names}); err != nil {
			return served, err
		}
	}
}

// receive records a response from addr and, when it is the first from a
// new server after the stream's loss, checks that it brings what the
// stream held and settles the stream.
func (c *failoverClients) receive(s *foStream, addr string, resp *discovery.DiscoveryResponse) error {
	at := time.Now()
	next, err := s.decode(resp)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	prev := s.server
	s.held, s.server = next, addr
	if prev == "" {
		close(s.first)
	}
	if !c.armed.Load() || s.lost.IsZero() || !s.current.IsZero() || prev == "" {
		return nil
	}
	if !maps.Equal(next.roots, s.base.roots) || next.leaf != s.base.leaf {
		return fmt.Errorf("served by %s a bundle or certificate other than the one it held, with nothing changed", addr)
	}
	s.current = at
	if c.pending.Add(-1) == 0 {
		go c.report()
	}
	return nil
}

// noteFailure counts why a connection got no response, by its error's
// text up to the first colon-separated detail that names an address.
func (c *failoverClients) noteFailure(err error) {
	why := "no error"
	if err != nil {
		st := status.Convert(err)
		why = st.Code().String() + ": " + st.Message()
		if i := strings.Index(why, "127."); i > 0 {
			why = why[:i] // the addresses differ per node
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failures[why]++
}

// arm notes what every stream holds and starts waiting for each to be
// current again on another server.
func (c *failoverClients) arm() {
	c.pending.Store(int64(len(c.streams)))
	c.attempts.Store(0)
	c.failed.Store(0)
	c.mu.Lock()
	c.failures = map[string]int{}
	c.mu.Unlock()
	for _, s := range c.streams {
		s.mu.Lock()
		s.base, s.lost, s.current = s.held, time.Time{}, time.Time{}
		s.mu.Unlock()
	}
	c.armed.Store(true)
	c.out.Printf("armed %d", len(c.streams))
}

// report prints the "done" line.
func (c *failoverClients) report() {
	var lost, current []time.Time
	var took []time.Duration
	for _, s := range c.streams {
		s.mu.Lock()
		lost, current = append(lost, s.lost), append(current, s.current)
		took = append(took, s.current.Sub(s.lost))
		s.mu.Unlock()
	}
	byTime := func(a, b time.Time) int { return a.Compare(b) }
	slices.SortFunc(lost, byTime)
	slices.SortFunc(current, byTime)
	slices.Sort(took)
	c.out.Printf("done first_lost=%d last_lost=%d last=%d p50=%d p99=%d attempts=%d failed=%d",
		lost[0].UnixNano(), lost[len(lost)-1].UnixNano(), current[len(current)-1].UnixNano(),
		took[len(took)/2], took[len(took)*99/100], c.attempts.Load(), c.failed.Load())
	c.mu.Lock()
	var why []string
	for w, n := range c.failures {
		why = append(why, fmt.Sprintf("%d× %s", n, w))
	}
	c.mu.Unlock()
	slices.Sort(why)
	c.out.Printf("failures %s", strings.Join(why, " | "))
}
