package app_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/xds"
)

// pct returns the p-th percentile (0..100) of sorted durations.
func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(float64(len(sorted)-1) * p / 100)
	return sorted[i]
}

// waitClosed reads from c until the peer closes it or limit passes, and
// returns how long after start that was (or -1 on the limit).
func waitClosed(c net.Conn, start time.Time, limit time.Duration) time.Duration {
	_ = c.SetReadDeadline(start.Add(limit))
	buf := make([]byte, 512)
	for {
		if _, err := c.Read(buf); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return -1
			}
			return time.Since(start)
		}
	}
}

// fetchOwn makes Fetch calls for a node's own secret and returns latencies.
func fetchOwn(t *testing.T, c secretservice.SecretDiscoveryServiceClient, node, ident string, n int) ([]time.Duration, int) {
	t.Helper()
	var lat []time.Duration
	fails := 0
	for i := 0; i < n; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		start := time.Now()
		r, err := c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: &core.Node{Id: node}, ResourceNames: []string{secretName(ident)}})
		lat = append(lat, time.Since(start))
		cancel()
		if err != nil || len(r.GetResources()) != 1 {
			fails++
			t.Errorf("fetch %d: %v (%d resources)", i, err, len(r.GetResources()))
		}
	}
	slices.Sort(lat)
	return lat, fails
}

// TestAbuseStalledHandshakes: connections that never finish TLS are closed
// within ConnectionTimeout + 2s, while an authenticated client keeps being
// served quickly.
func TestAbuseStalledHandshakes(t *testing.T) {
	rng := testkit.Rand(t)
	m := startMesh(t, nil)
	m.addIdentity("web")
	cert := m.joined("n1", "web")
	sdsc := secretservice.NewSecretDiscoveryServiceClient(m.dial(cert))
	if _, fails := fetchOwn(t, sdsc, "n1", "web", 1); fails > 0 { // warm the connection
		t.FailNow()
	}

	stalled := 200
	if testkit.Soak() {
		stalled = 1000
	}
	limit := xds.ConnectionTimeout + 2*time.Second
	var (
		wg              sync.WaitGroup
		mu              sync.Mutex
		closedAfter     []time.Duration
		notClosed, dErr int
	)
	var stalling sync.WaitGroup // done when every connection is open and stalled
	stalling.Add(stalled)
	for i := 0; i < stalled; i++ {
		wg.Add(1)
		// Half send nothing, half send the first bytes of a ClientHello
		// (a TLS record header) and stall.
		partial := rng.IntN(2) == 0
		go func() {
			defer wg.Done()
			stalls := sync.OnceFunc(stalling.Done)
			defer stalls()
			start := time.Now()
			c, err := net.DialTimeout("tcp", m.app.XDS, 5*time.Second)
			if err != nil {
				mu.Lock()
				dErr++
				mu.Unlock()
				return
			}
			defer c.Close()
			if partial {
				_, _ = c.Write([]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01})
			}
			stalls()
			d := waitClosed(c, start, limit+3*time.Second)
			mu.Lock()
			defer mu.Unlock()
			if d < 0 {
				notClosed++
			} else {
				closedAfter = append(closedAfter, d)
			}
		}()
	}
	// Meanwhile, the legitimate client, once every stalled connection is in.
	stalling.Wait()
	lat, fails := fetchOwn(t, sdsc, "n1", "web", 100)
	wg.Wait()
	slices.Sort(closedAfter)

	t.Logf("stalled connections %d: closed %d (min %s, p50 %s, max %s), not closed within %s: %d, dial errors %d",
		stalled, len(closedAfter), pct(closedAfter, 0).Round(time.Millisecond), pct(closedAfter, 50).Round(time.Millisecond),
		pct(closedAfter, 100).Round(time.Millisecond), limit+3*time.Second, notClosed, dErr)
	t.Logf("legitimate client during the stall: 100 FetchSecrets, p50 %s, p99 %s, max %s, failures %d",
		pct(lat, 50).Round(time.Microsecond), pct(lat, 99).Round(time.Microsecond), pct(lat, 100).Round(time.Microsecond), fails)
	if notClosed > 0 || dErr > 0 {
		t.Errorf("%d stalled connections not closed, %d dial errors", notClosed, dErr)
	}
	if mx := pct(closedAfter, 100); mx > limit {
		t.Errorf("slowest stalled connection closed after %s, want <= ConnectionTimeout + 2s = %s", mx, limit)
	}
	if mn := pct(closedAfter, 0); mn < xds.ConnectionTimeout-time.Second {
		t.Logf("note: some stalled connections closed after only %s", mn)
	}
	if p99 := pct(lat, 99); p99 >= time.Second {
		t.Errorf("legitimate p99 %s, want < 1s", p99)
	}
}

// TestAbuseOversizedMessage: a request larger than MaxRecvMsgSize is refused
// with ResourceExhausted, on a stream and on Fetch, and the server goes on.
func TestAbuseOversizedMessage(t *testing.T) {
	testkit.Rand(t)
	m := startMesh(t, nil)
	m.addIdentity("web")
	cert := m.joined("n1", "web")
	conn := m.dial(cert)
	var names []string
	size := 0
	for i := 0; size < 3<<20; i++ {
		n := secretName("web") + "/" + strings.Repeat("x", 1000)
		names = append(names, n)
		size += len(n) + 3
	}
	req := &discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: names}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = s.Send(req)
	_, err = s.Recv()
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("ADS with a %d-byte request: %v, want ResourceExhausted", size, err)
	}
	t.Logf("ADS request of %.1f MiB (%d names): %s: %s", float64(size)/(1<<20), len(names), status.Code(err), clipStr(status.Convert(err).Message(), 100))

	sdsc := secretservice.NewSecretDiscoveryServiceClient(conn)
	_, err = sdsc.FetchSecrets(ctx, req)
	if status.Code(err) != codes.ResourceExhausted {
		t.Errorf("FetchSecrets with a %d-byte request: %v, want ResourceExhausted", size, err)
	}
	// Just under the limit is not refused for its size.
	if _, fails := fetchOwn(t, sdsc, "n1", "web", 3); fails > 0 {
		t.Error("the server stopped answering after the oversized requests")
	}
}

// TestAbuseStreamFlood: one authenticated connection opens 1,000 ADS
// streams. At most MaxConcurrentStreams are open at once on the server and
// another client is still served.
func TestAbuseStreamFlood(t *testing.T) {
	testkit.Rand(t)
	m := startMesh(t, nil)
	m.addIdentity("web")
	m.addIdentity("api")
	cert := m.joined("n1", "web")
	other := m.joined("n2", "api")
	otherc := secretservice.NewSecretDiscoveryServiceClient(m.dial(other))
	// Connected before the flood: its latencies are those of a node being
	// served, not of its TLS handshake.
	if _, fails := fetchOwn(t, otherc, "n2", "api", 1); fails > 0 {
		t.FailNow()
	}

	flood := 1000
	floodFor := 4 * time.Second
	// floodFull bounds the wait for the server to count its limit.
	const floodFull = 30 * time.Second
	if testkit.Soak() {
		flood, floodFor = 5000, 20*time.Second
	}
	conn := m.dial(cert)
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	// The flood holds for floodFor once the server counts its limit of
	// streams: on a loaded machine the streams take a while to be served.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var opened, refused, open, maxOpen, endedEarly atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < flood; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := ads.StreamAggregatedResources(ctx)
			if err != nil {
				refused.Add(1)
				return
			}
			if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("web")}}); err != nil {
				refused.Add(1)
				return
			}
			if _, err := s.Recv(); err != nil {
				refused.Add(1)
				return
			}
			if ctx.Err() != nil {
				// Served only as the flood ended, in a slot a cancelled
				// stream freed: the others' ends may not be counted yet.
				refused.Add(1)
				return
			}
			opened.Add(1)
			cur := open.Add(1)
			for {
				if old := maxOpen.Load(); cur <= old || maxOpen.CompareAndSwap(old, cur) {
					break
				}
			}
			for err == nil {
				_, err = s.Recv()
			}
			open.Add(-1)
			if ctx.Err() == nil {
				endedEarly.Add(1)
				t.Logf("a served stream ended before the flood did: %v", err)
			}
		}()
	}

	// Watch the server's count while the flood holds, and check that
	// another node is served meanwhile.
	maxStreams, polls := 0, 0
	var lat []time.Duration
	sample := time.NewTicker(100 * time.Millisecond)
	defer sample.Stop()
	began := time.Now()
	end := began.Add(floodFull)
	var fullAfter time.Duration
	for time.Now().Before(end) {
		var n api.Node
		m.admin("GET", api.PathNodes+"/n1", nil, &n, http.StatusOK)
		maxStreams = max(maxStreams, n.Connection.Streams)
		polls++
		if fullAfter == 0 && maxStreams >= xds.MaxConcurrentStreams {
			fullAfter = time.Since(began)
			end = time.Now().Add(floodFor)
		}
		l, fails := fetchOwn(t, otherc, "n2", "api", 1)
		if fails > 0 {
			break
		}
		lat = append(lat, l...)
		<-sample.C
	}
	cancel()
	wg.Wait()
	slices.Sort(lat)
	t.Logf("stream flood %d on one connection, the server at its limit after %s, then held for %s: served %d (max %d at once on the client, %d ended early), blocked/failed %d; server-side max open streams %d (limit %d, %d polls); other node during flood: %d fetches, p50 %s, p99 %s",
		flood, fullAfter.Round(time.Millisecond), floodFor, opened.Load(), maxOpen.Load(), endedEarly.Load(), refused.Load(), maxStreams, xds.MaxConcurrentStreams, polls, len(lat),
		pct(lat, 50).Round(time.Microsecond), pct(lat, 99).Round(time.Microsecond))
	if maxStreams > xds.MaxConcurrentStreams {
		t.Errorf("server had %d streams open for one connection, limit %d", maxStreams, xds.MaxConcurrentStreams)
	}
	if fullAfter == 0 {
		t.Errorf("flood reached only %d streams within %s (limit %d): the test did not load the server", maxStreams, floodFull, xds.MaxConcurrentStreams)
	}
	if int(maxOpen.Load()) > xds.MaxConcurrentStreams {
		t.Errorf("%d streams were served at once on one connection", maxOpen.Load())
	}
	// The plan's 1 s p99 bound is for the slowloris test; here the other
	// node must just keep being served. Under the race detector with every
	// package's tests running at once, 1 s was too tight to be reliable.
	if len(lat) == 0 || pct(lat, 99) >= 3*time.Second {
		t.Errorf("other node during the flood: %d fetches, p99 %s", len(lat), pct(lat, 99))
	}
	// The streams go away once the flooder gives up. The server announces
	// no event for that: poll its count.
	var n api.Node
	if !pollUntil(10*time.Second, 50*time.Millisecond, func() bool {
		m.admin("GET", api.PathNodes+"/n1", nil, &n, http.StatusOK)
		return n.Connection.Streams == 0
	}) {
		t.Errorf("%d streams still counted 10s after the flood ended", n.Connection.Streams)
	}
}

// TestAbuseAdminSlowHeaders: admin API clients that send part of a request
// and stall are cut after ReadHeaderTimeout (5s) + margin; the API keeps
// answering others.
func TestAbuseAdminSlowHeaders(t *testing.T) {
	rng := testkit.Rand(t)
	m := startMesh(t, nil)
	const readHeaderTimeout = 5 * time.Second // internal/admin/admin.go
	limit := readHeaderTimeout + 2*time.Second
	clients := 50
	if testkit.Soak() {
		clients = 500
	}
	partials := []string{
		"GET /healthz HTTP/1.1\r\nHost: x\r\n",
		"GET /v1/identities HTT",
		"POST /v1/identities HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nX-Slow: ",
		"",
	}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		cut       []time.Duration
		notCut    int
		responses = map[string]int{}
	)
	var stalling sync.WaitGroup // done when every client has sent its part
	stalling.Add(clients)
	for i := 0; i < clients; i++ {
		wg.Add(1)
		p := partials[rng.IntN(len(partials))]
		go func() {
			defer wg.Done()
			stalls := sync.OnceFunc(stalling.Done)
			defer stalls()
			start := time.Now()
			c, err := net.DialTimeout("tcp", m.app.Admin, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			defer c.Close()
			_, _ = io.WriteString(c, p)
			stalls()
			_ = c.SetReadDeadline(start.Add(limit + 3*time.Second))
			data, err := io.ReadAll(c)
			d := time.Since(start)
			mu.Lock()
			defer mu.Unlock()
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				notCut++
				return
			}
			cut = append(cut, d)
			first, _, _ := strings.Cut(string(data), "\r\n")
			if first == "" {
				first = "(closed, no response)"
			}
			responses[first]++
		}()
	}
	stalling.Wait()
	var lat []time.Duration
	for i := 0; i < 20; i++ {
		start := time.Now()
		m.admin("GET", "/healthz", nil, nil, http.StatusOK)
		lat = append(lat, time.Since(start))
	}
	wg.Wait()
	slices.Sort(cut)
	slices.Sort(lat)
	t.Logf("slow-header clients %d: cut %d (min %s, p50 %s, max %s), not cut within %s: %d; answers %v; /healthz meanwhile p50 %s max %s",
		clients, len(cut), pct(cut, 0).Round(time.Millisecond), pct(cut, 50).Round(time.Millisecond), pct(cut, 100).Round(time.Millisecond),
		limit+3*time.Second, notCut, responses, pct(lat, 50).Round(time.Microsecond), pct(lat, 100).Round(time.Microsecond))
	if notCut > 0 {
		t.Errorf("%d slow clients were never cut", notCut)
	}
	if mx := pct(cut, 100); mx > limit {
		t.Errorf("slowest cut after %s, want <= ReadHeaderTimeout + 2s = %s", mx, limit)
	}
	if mn := pct(cut, 0); mn < readHeaderTimeout-500*time.Millisecond {
		t.Errorf("a slow client was cut after %s, before ReadHeaderTimeout", mn)
	}
}
