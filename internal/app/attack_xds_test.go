package app_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/binary"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
	"github.com/meshca/meshca/xds"
)

// h2attacker is a hand-written HTTP/2 client over TLS (ALPN h2) that
// speaks just enough gRPC framing to attack the xDS port as an outsider
// would: it opens streams, announces gRPC messages and sends what it likes
// of them, and records how the server answered each stream.
type h2attacker struct {
	conn *tls.Conn
	fr   *http2.Framer
	wmu  sync.Mutex // framer writes
	hbuf bytes.Buffer
	henc *hpack.Encoder

	mu         sync.Mutex
	changed    chan struct{} // closed and replaced on every change below
	settings   bool          // the server's SETTINGS arrived
	maxStreams uint32
	initWin    int64
	connWin    int64
	streamWin  map[uint32]int64
	ended      map[uint32]string // stream -> how the server ended it
	goAway     bool
	err        error // the connection ended
	next       uint32
}

// dialH2 connects from the loopback address local (empty: any) without a
// client certificate.
func dialH2(ctx context.Context, addr, local string) (*h2attacker, error) {
	return dialH2With(ctx, addr, local, &tls.Config{InsecureSkipVerify: true})
}

// dialH2With connects from local with the client TLS configuration cfg
// (a client certificate, say); ALPN is set to h2.
func dialH2With(ctx context.Context, addr, local string, cfg *tls.Config) (*h2attacker, error) {
	raw, err := testkit.Dial(ctx, addr, local)
	if err != nil {
		return nil, err
	}
	cfg = cfg.Clone()
	cfg.NextProtos = []string{"h2"}
	c := tls.Client(raw, cfg)
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	if err := c.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, err
	}
	_ = c.SetDeadline(time.Time{})
	if p := c.ConnectionState().NegotiatedProtocol; p != "h2" {
		c.Close()
		return nil, fmt.Errorf("ALPN %q", p)
	}
	a := &h2attacker{conn: c, changed: make(chan struct{}), initWin: 65535, connWin: 65535,
		streamWin: map[uint32]int64{}, ended: map[uint32]string{}, next: 1, maxStreams: 1 << 31}
	a.henc = hpack.NewEncoder(&a.hbuf)
	a.fr = http2.NewFramer(c, c)
	a.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	return a, nil
}

// start sends the HTTP/2 preface and reads the server's frames.
func (a *h2attacker) start() error {
	a.wmu.Lock()
	_, err := a.conn.Write([]byte(http2.ClientPreface))
	if err == nil {
		err = a.fr.WriteSettings()
	}
	a.wmu.Unlock()
	if err != nil {
		a.update(func() { a.err = err })
		return err
	}
	go a.read()
	return nil
}

func (a *h2attacker) update(f func()) {
	a.mu.Lock()
	f()
	close(a.changed)
	a.changed = make(chan struct{})
	a.mu.Unlock()
}

func (a *h2attacker) read() {
	for {
		f, err := a.fr.ReadFrame()
		if err != nil {
			a.update(func() { a.err = err })
			return
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			a.update(func() {
				a.settings = true
				if v, ok := f.Value(http2.SettingMaxConcurrentStreams); ok {
					a.maxStreams = v
				}
				if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
					for id := range a.streamWin {
						a.streamWin[id] += int64(v) - a.initWin
					}
					a.initWin = int64(v)
				}
			})
			a.write(func() error { return a.fr.WriteSettingsAck() })
		case *http2.WindowUpdateFrame:
			a.update(func() {
				if f.StreamID == 0 {
					a.connWin += int64(f.Increment)
				} else {
					a.streamWin[f.StreamID] += int64(f.Increment)
				}
			})
		case *http2.MetaHeadersFrame:
			if s := f.PseudoValue("status"); s != "" && s != "200" {
				a.update(func() { a.ended[f.StreamID] = "HTTP " + s })
			}
			if code, ok := headerField(f, "grpc-status"); ok {
				msg, _ := headerField(f, "grpc-message")
				a.update(func() { a.ended[f.StreamID] = "grpc-status " + code + " " + msg })
			}
		case *http2.RSTStreamFrame:
			a.update(func() {
				if _, ok := a.ended[f.StreamID]; !ok {
					a.ended[f.StreamID] = "RST " + f.ErrCode.String()
				}
			})
		case *http2.GoAwayFrame:
			a.update(func() { a.goAway = true })
		case *http2.PingFrame:
			if !f.IsAck() {
				a.write(func() error { return a.fr.WritePing(true, f.Data) })
			}
		}
	}
}

func headerField(f *http2.MetaHeadersFrame, name string) (string, bool) {
	for _, h := range f.Fields {
		if h.Name == name {
			return h.Value, true
		}
	}
	return "", false
}

func (a *h2attacker) write(f func() error) error {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	_ = a.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return f()
}

// open sends the HEADERS of a gRPC call to path and returns its stream.
func (a *h2attacker) open(path string) (uint32, error) {
	a.wmu.Lock()
	defer a.wmu.Unlock()
	a.mu.Lock()
	id := a.next
	a.next += 2
	a.streamWin[id] = a.initWin
	a.mu.Unlock()
	a.hbuf.Reset()
	for _, h := range [][2]string{{":method", "POST"}, {":scheme", "https"}, {":path", path}, {":authority", "localhost"},
		{"content-type", "application/grpc"}, {"te", "trailers"}} {
		_ = a.henc.WriteField(hpack.HeaderField{Name: h[0], Value: h[1]})
	}
	_ = a.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return id, a.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: a.hbuf.Bytes(), EndHeaders: true})
}

// send writes data on stream id as flow control allows, waiting up to
// wait for window; it returns how much it wrote.
func (a *h2attacker) send(id uint32, data []byte, wait time.Duration) int {
	deadline := time.NewTimer(wait)
	defer deadline.Stop()
	sent := 0
	for sent < len(data) {
		a.mu.Lock()
		n := min(int64(len(data)-sent), a.connWin, a.streamWin[id], 16384)
		_, ended := a.ended[id]
		stop := ended || a.err != nil || a.goAway
		ch := a.changed
		if n > 0 && !stop {
			a.connWin -= n
			a.streamWin[id] -= n
		}
		a.mu.Unlock()
		if stop {
			return sent
		}
		if n <= 0 {
			select {
			case <-ch:
				continue
			case <-deadline.C:
				return sent
			}
		}
		if err := a.write(func() error { return a.fr.WriteData(id, false, data[sent:sent+int(n)]) }); err != nil {
			return sent
		}
		sent += int(n)
	}
	return sent
}

// waitFor waits until cond holds (checked under the state lock) or the
// limit passes.
func (a *h2attacker) waitFor(limit time.Duration, cond func() bool) bool {
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		a.mu.Lock()
		ok, ch := cond(), a.changed
		a.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-timer.C:
			return false
		}
	}
}

// endedAs returns how the server ended stream id ("" while open).
func (a *h2attacker) endedAs(id uint32) string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.ended[id]
}

// closedByServer reports whether the server ended the connection, and
// whether it had spoken HTTP/2 first (a gRPC server sends SETTINGS; the
// connection gate closes before any).
func (a *h2attacker) closedByServer() (closed, spoke bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.err != nil, a.settings
}

func (a *h2attacker) Close() { a.conn.Close() }

// grpcPrefix is a gRPC message header announcing n bytes.
func grpcPrefix(n uint32) []byte {
	p := make([]byte, 5)
	binary.BigEndian.PutUint32(p[1:], n)
	return p
}

// xdsDescriptors counts the descriptors this process holds for
// connections accepted on the xDS port (local port port): sockets of ours
// in /proc/net/tcp whose local port it is, other than the listener.
func xdsDescriptors(t *testing.T, port int) int {
	t.Helper()
	ours := map[string]bool{}
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	for _, e := range ents {
		l, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && strings.HasPrefix(l, "socket:[") {
			ours[strings.TrimSuffix(strings.TrimPrefix(l, "socket:["), "]")] = true
		}
	}
	n := 0
	for _, file := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		f, err := os.Open(file)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 10 || fs[3] == "0A" { // 0A: listening
				continue
			}
			_, hexPort, _ := strings.Cut(fs[1], ":")
			p, _ := strconv.ParseUint(hexPort, 16, 16)
			if int(p) == port && ours[fs[9]] {
				n++
			}
		}
		f.Close()
	}
	return n
}

func portOf(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, _ := strconv.Atoi(p)
	return n
}

// Methods an outsider tries without a node certificate.
const (
	pathFetchSecrets  = "/envoy.service.secret.v3.SecretDiscoveryService/FetchSecrets"
	pathStreamSecrets = "/envoy.service.secret.v3.SecretDiscoveryService/StreamSecrets"
	pathADS           = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	pathMetricsSink   = "/envoy.service.metrics.v3.MetricsService/StreamMetrics"
	pathAccessLogSink = "/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs"
)

func heapAfterGC() uint64 {
	var ms runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// TestAttackXDSSlowBody: a TLS client without a certificate opens 100
// streams per connection, announces gRPC messages and withholds the last
// byte, from 160 connections on 10 addresses at once. Every method but
// Join is refused from its headers; a Join message larger than 64 KiB from
// its 5-byte header; and what the attack can hold (announcing just under
// the join limit) stays under 64 MiB in all and 1 MiB per connection,
// while nodes are served and a new node joins.
func TestAttackXDSSlowBody(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	m.addIdentity("api")
	cert := m.joined("n1", "web")
	sdsc := secretservice.NewSecretDiscoveryServiceClient(m.dial(cert))
	if _, fails := fetchOwn(t, sdsc, "n1", "web", 1); fails > 0 {
		t.FailNow()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	// Refused before any body: headers only (or a 5-byte message header).
	a, err := dialH2(ctx, m.app.XDS, "127.0.0.2")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	if err := a.start(); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name, path string
		prefix     []byte
		want       string
	}{
		{"FetchSecrets, headers only", pathFetchSecrets, nil, "grpc-status 16 "},
		{"StreamSecrets, headers only", pathStreamSecrets, nil, "grpc-status 16 "},
		{"ADS, headers only", pathADS, nil, "grpc-status 16 "},
		{"metrics sink, headers only", pathMetricsSink, nil, "grpc-status 16 "},
		{"access-log sink, headers only", pathAccessLogSink, nil, "grpc-status 16 "},
		{"Renew, headers only", nodeapi.FullRenewMethod, nil, "grpc-status 16 "},
		{"Join announcing 2 MiB - 16", nodeapi.FullJoinMethod, grpcPrefix(2<<20 - 16), "grpc-status 8 "},
	} {
		id, err := a.open(c.path)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if c.prefix != nil && a.send(id, c.prefix, 5*time.Second) != len(c.prefix) {
			t.Fatalf("%s: could not send the message header", c.name)
		}
		a.waitFor(10*time.Second, func() bool { return a.ended[id] != "" || a.err != nil })
		got := a.endedAs(id)
		t.Logf("no certificate, %-30s -> %s", c.name, clipStr(got, 110))
		if !strings.HasPrefix(got, c.want) {
			t.Errorf("%s: server answered %q, want %s...", c.name, got, c.want)
		}
	}

	// The slow-body attack, from a child process so that the heap
	// measured here is the server's alone.
	base := heapAfterGC()
	report := runAttacker(t, attackSlowBody, m.app.XDS)
	var held, heldStreams, refusedStreams, dialFails, redials int
	if _, err := fmt.Sscanf(report, "held %d streams %d refused %d dialfail %d redials %d", &held, &heldStreams, &refusedStreams, &dialFails, &redials); err != nil {
		t.Fatalf("attacker report %q: %v", report, err)
	}
	growth := int64(heapAfterGC()) - int64(base)
	descs := xdsDescriptors(t, portOf(t, m.app.XDS))
	// The server's own count of what the attack holds.
	serverOpen, ok := sample(t, scrape(t, m), `meshca_connections_open{listener="xds_unauthenticated"}`)
	if !ok {
		t.Fatal(`meshca_connections_open{listener="xds_unauthenticated"} not reported`)
	}
	// While the attack holds, a node is served, and a new node joins (its
	// connection takes the place of the oldest attacker's) and is served.
	lat, fails := fetchOwn(t, sdsc, "n1", "web", 20)
	cert2 := m.joined("n2", "api")
	_, fails2 := fetchOwn(t, secretservice.NewSecretDiscoveryServiceClient(m.dial(cert2)), "n2", "api", 5)
	text := scrape(t, m)
	evicted, _ := sample(t, text, `meshca_xds_events_total{event="connections_evicted"}`)
	slices.Sort(lat)
	perConn := float64(growth) / float64(max(held, 1))
	t.Logf("slow body: %d connections from %d addresses x %d Join streams, each announcing %d bytes and sending all but the last; "+
		"held by the server: %d connections (the server counts %v; %d evicted to make room, %d dialled again, %d dial failures), %d streams holding a body, %d refused by the stream limit; "+
		"xDS descriptors %d; server heap growth after GC %.1f MiB (%.0f KiB per held connection)",
		slowConns, slowAddrs, slowStreams, slowAnnounce, held, serverOpen, int(evicted), redials, dialFails, heldStreams, refusedStreams,
		descs, float64(growth)/(1<<20), perConn/1024)
	t.Logf("while the attack held: node n1 20 FetchSecrets p50 %s max %s, failures %d; node n2 joined and fetched, failures %d",
		pct(lat, 50).Round(time.Microsecond), pct(lat, 100).Round(time.Microsecond), fails, fails2)
	if growth > 64<<20 {
		t.Errorf("heap grew %d MiB under the attack, want <= 64 MiB", growth>>20)
	}
	if perConn > 1<<20 {
		t.Errorf("%.0f KiB per held connection, want <= 1 MiB", perConn/1024)
	}
	if held < xds.DefaultMaxUnauthenticated/2 || heldStreams < held || serverOpen < xds.DefaultMaxUnauthenticated/2 {
		t.Errorf("the attack held only %d connections (the server counts %v) and %d streams: the test did not load the server", held, serverOpen, heldStreams)
	}
	if held > xds.DefaultMaxUnauthenticated {
		t.Errorf("%d connections without a certificate held, limit %d", held, xds.DefaultMaxUnauthenticated)
	}
	if fails > 0 || fails2 > 0 {
		t.Errorf("nodes were not served during the attack: %d + %d failures", fails, fails2)
	}
}

// The slow-body attack of TestAttackXDSSlowBody: announcing just under the
// join server's message limit, the most a stream can make it hold.
const (
	slowAddrs, slowConns, slowStreams = 10, 160, 100
	slowAnnounce                      = 64<<10 - 16
	// On a loaded machine 160 handshakes at once outlast the server's
	// handshake timeout and the attack holds less than it means to: the
	// attacker handshakes a few at a time and dials again after a failure.
	slowDialsAtOnce, slowDialAttempts = 16, 3
)

// slowBodyClients runs the slow-body attack against addr and reports what
// the server holds as "held N streams N refused N dialfail N redials N".
func slowBodyClients(addr string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	body := append(grpcPrefix(slowAnnounce), make([]byte, slowAnnounce-1)...) // all but the last byte
	var (
		wg                                 sync.WaitGroup
		attackers                          = make([]*h2attacker, slowConns)
		holding                            = make([]int, slowConns)
		refusedStreams, dialFails, redials atomic.Int64
		handshakes                         = make(chan struct{}, slowDialsAtOnce)
	)
	dial := func(local string) (a *h2attacker, err error) {
		for try := range slowDialAttempts {
			if try > 0 {
				redials.Add(1)
			}
			handshakes <- struct{}{}
			a, err = dialH2(ctx, addr, local)
			<-handshakes
			if err == nil || ctx.Err() != nil {
				break
			}
		}
		return a, err
	}
	for i := range attackers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			a, err := dial(fmt.Sprintf("127.0.0.%d", 10+i%slowAddrs))
			if err != nil {
				dialFails.Add(1)
				return
			}
			attackers[i] = a
			if a.start() != nil {
				return
			}
			var ids []uint32
			for range slowStreams {
				id, err := a.open(nodeapi.FullJoinMethod)
				if err != nil {
					return
				}
				ids = append(ids, id)
			}
			// Streams over the server's limit are refused at once; send
			// the body on the others.
			a.waitFor(5*time.Second, func() bool {
				return a.err != nil || a.settings && len(a.ended) >= slowStreams-int(a.maxStreams)
			})
			for _, id := range ids {
				if a.endedAs(id) != "" {
					refusedStreams.Add(1)
					continue
				}
				if a.send(id, body, 5*time.Second) == len(body) {
					holding[i]++
				}
			}
		}()
	}
	wg.Wait()
	held, heldStreams := 0, 0
	for i, a := range attackers {
		if a == nil {
			continue
		}
		if closed, _ := a.closedByServer(); !closed && holding[i] > 0 {
			held++
			heldStreams += holding[i]
		}
	}
	return fmt.Sprintf("held %d streams %d refused %d dialfail %d redials %d", held, heldStreams, refusedStreams.Load(), dialFails.Load(), redials.Load())
}

// Attacks run in a child process (this test binary, see TestMain), so that
// the heap a test measures is the server's alone.
const (
	attackEnv        = "MESHCA_TEST_ATTACK"
	attackAddrEnv    = "MESHCA_TEST_ATTACK_ADDR"
	attackSlowBody   = "slow-body"
	attackStalledTLS = "stalled-certificate"
)

func TestMain(m *testing.M) {
	if mode := os.Getenv(attackEnv); mode != "" {
		var report string
		switch mode {
		case attackSlowBody:
			report = slowBodyClients(os.Getenv(attackAddrEnv))
		case attackStalledTLS:
			report = stalledCertClients(os.Getenv(attackAddrEnv))
		case signClientMode:
			if err := signClientsMain(os.Getenv(attackAddrEnv)); err != nil {
				fmt.Println(err)
				os.Exit(1)
			}
			os.Exit(0)
		default:
			fmt.Fprintf(os.Stderr, "unknown attack %q\n", mode)
			os.Exit(2)
		}
		// Report, then hold everything until the test closes stdin.
		fmt.Println(report)
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// runAttacker starts the attack mode against addr in a child process and
// returns its one-line report once the attack holds; the child ends when
// the test does.
func runAttacker(t *testing.T, mode, addr string) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), attackEnv+"="+mode, attackAddrEnv+"="+addr)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = testkit.LogWriter{TB: t}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close() // the child exits when its stdin closes
		if err := cmd.Wait(); err != nil {
			t.Errorf("attacker process: %v", err)
		}
	})
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		sc.Scan()
		line <- sc.Text()
		for sc.Scan() {
		}
	}()
	select {
	case report := <-line:
		return report
	case <-time.After(90 * time.Second):
		t.Fatal("the attacker process did not report within 90s")
		return ""
	}
}

// TestAttackXDSConnectionFlood: idle connections without a certificate
// (TCP only, TLS without HTTP/2, HTTP/2 without a stream) from one address
// and from several. Beyond the per-address limit they are closed as soon
// as the handshake shows no certificate; beyond the total for such peers
// the oldest are closed; all are closed after the idle or handshake
// timeout, and a held Join body after the maximum age. The server never
// holds more connections than the limits (as its limiter counts them, and
// reports in meshca_connections_peak), its descriptors stay within the
// total limit, the admin API answers during the flood, and nodes are
// served.
func TestAttackXDSConnectionFlood(t *testing.T) {
	const maxConns, maxUnauth, perAddr = 64, 24, 8
	const handshakeTimeout = 3 * time.Second
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		c.XDS.MaxConnections = maxConns
		c.XDS.MaxUnauthenticatedConnections = maxUnauth
		c.XDS.MaxUnauthenticatedPerAddress = perAddr
	}, app.WithXDSLimits(func(l *xds.Limits) {
		// Long enough for 30 handshakes at once under -race on a loaded
		// machine: one ended by this timeout is counted neither over the
		// address limit nor evicted, which the first check counts on.
		l.HandshakeTimeout = handshakeTimeout
		l.UnauthenticatedIdleTimeout = time.Second
		l.UnauthenticatedMaxAge = 2 * time.Second
	}))
	m.addIdentity("web")
	m.addIdentity("api")
	cert := m.joined("n1", "web")
	sdsc := secretservice.NewSecretDiscoveryServiceClient(m.dial(cert))
	if _, fails := fetchOwn(t, sdsc, "n1", "web", 1); fails > 0 {
		t.FailNow()
	}
	port := portOf(t, m.app.XDS)
	nodeDescs := xdsDescriptors(t, port)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	counter := func(event string) int {
		v, _ := sample(t, scrape(t, m), `meshca_xds_events_total{event="`+event+`"}`)
		return int(v)
	}

	// Watch the server's descriptors for xDS connections while the flood
	// lasts.
	var maxDescs atomic.Int64
	watchDone := make(chan struct{})
	stopWatch := make(chan struct{})
	go func() {
		defer close(watchDone)
		for {
			if n := int64(xdsDescriptors(t, port)); n > maxDescs.Load() {
				maxDescs.Store(n)
			}
			select {
			case <-stopWatch:
				return
			case <-time.After(5 * time.Millisecond):
			}
		}
	}()

	// flood opens n HTTP/2 connections from local and reports how many the
	// server answered with SETTINGS (served) and how many it closed before
	// a word (refused by the gate).
	flood := func(local string, n int) (conns []*h2attacker, served, refused int) {
		var wg sync.WaitGroup
		conns = make([]*h2attacker, n)
		for i := range conns {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a, err := dialH2(ctx, m.app.XDS, local)
				if err != nil {
					return // closed during the handshake: evicted
				}
				conns[i] = a
				if a.start() == nil {
					a.waitFor(5*time.Second, func() bool { return a.settings || a.err != nil })
				}
			}()
		}
		wg.Wait()
		for _, a := range conns {
			if a == nil {
				refused++
				continue
			}
			if closed, spoke := a.closedByServer(); spoke {
				served++
			} else if closed {
				refused++
			}
		}
		return conns, served, refused
	}

	// One address.
	over0, evict0 := counter("connections_over_address_limit"), counter("connections_evicted")
	one, served1, refused1 := flood("127.0.0.20", 30)
	over1, evict1 := counter("connections_over_address_limit"), counter("connections_evicted")
	// A served connection closed meanwhile (evicted: 30 handshakes at once
	// exceed the 24 without a certificate; or idle) frees its address's
	// slot for another, so the limit holds for those open at once.
	servedOpen := 0
	for _, a := range one {
		if a == nil {
			continue
		}
		if closed, spoke := a.closedByServer(); spoke && !closed {
			servedOpen++
		}
	}
	t.Logf("one address, 30 idle HTTP/2 connections: served %d (%d still open), closed before any HTTP/2 frame %d (over the address limit %d, evicted %d); limit per address %d",
		served1, servedOpen, refused1, over1-over0, evict1-evict0, perAddr)
	if servedOpen > perAddr || served1+refused1 != 30 || over1-over0 < 1 || over1-over0+evict1-evict0 < 30-served1 {
		t.Errorf("one address: served %d (%d open), refused %d, counted %d over the limit and %d evicted; want at most %d open, the rest closed and counted",
			served1, servedOpen, refused1, over1-over0, evict1-evict0, perAddr)
	}

	// Several addresses, with TCP-only and TLS-only connections mixed in,
	// while the admin API and nodes are used.
	var (
		adminLat []time.Duration
		mu       sync.Mutex
		wg       sync.WaitGroup
		many     [][]*h2attacker
		servedN  int
	)
	raw := make([]net.Conn, 0, 20)
	for i := range 20 {
		c, err := net.DialTimeout("tcp", m.app.XDS, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if i%2 == 1 { // half complete TLS, then stay silent
			tc := tls.Client(c, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}})
			if err := tc.Handshake(); err != nil {
				t.Fatal(err)
			}
			c = tc
		}
		raw = append(raw, c)
	}
	for i := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns, served, _ := flood(fmt.Sprintf("127.0.0.%d", 21+i), perAddr)
			mu.Lock()
			many = append(many, conns)
			servedN += served
			mu.Unlock()
		}()
	}
	for range 10 {
		start := time.Now()
		m.admin("GET", "/healthz", nil, nil, http.StatusOK)
		m.admin("GET", api.PathNodes, nil, nil, http.StatusOK)
		adminLat = append(adminLat, time.Since(start))
	}
	lat, fails := fetchOwn(t, sdsc, "n1", "web", 10)
	cert2 := m.joined("n2", "api")
	_, fails2 := fetchOwn(t, secretservice.NewSecretDiscoveryServiceClient(m.dial(cert2)), "n2", "api", 3)
	wg.Wait()
	evict2 := counter("connections_evicted")
	slices.Sort(adminLat)
	slices.Sort(lat)
	t.Logf("6 addresses x %d HTTP/2 + 20 TCP/TLS-only idle connections: %d answered, %d evicted to make room (limit %d without a certificate); "+
		"admin API during the flood: 10 x (/healthz + /v1/nodes) p50 %s max %s; node n1 fetches p50 %s, failures %d; node n2 joined and fetched, failures %d",
		perAddr, servedN, evict2-evict1, maxUnauth, pct(adminLat, 50).Round(time.Microsecond), pct(adminLat, 100).Round(time.Microsecond),
		pct(lat, 50).Round(time.Microsecond), fails, fails2)
	if fails > 0 || fails2 > 0 {
		t.Errorf("nodes not served during the flood: %d + %d failures", fails, fails2)
	}
	if pct(adminLat, 100) > 3*time.Second {
		t.Errorf("admin API took %s during the flood", pct(adminLat, 100))
	}

	// A held Join body is cut at the maximum age (plus its grace).
	slow, err := dialH2(ctx, m.app.XDS, "127.0.0.30")
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	if err := slow.start(); err != nil {
		t.Fatal(err)
	}
	id, _ := slow.open(nodeapi.FullJoinMethod)
	body := append(grpcPrefix(1000), make([]byte, 999)...)
	slowStart := time.Now()
	if n := slow.send(id, body, 5*time.Second); n != len(body) {
		t.Fatalf("slow body: sent %d of %d bytes (stream %q)", n, len(body), slow.endedAs(id))
	}

	// Everything without a certificate is closed by the timeouts.
	start := time.Now()
	all := slices.Concat(append(many, one)...)
	allClosed := func() bool {
		for _, a := range all {
			if a == nil {
				continue
			}
			if closed, _ := a.closedByServer(); !closed {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !allClosed() && time.Now().Before(deadline) {
		for _, a := range all {
			if a != nil {
				a.waitFor(time.Until(deadline), func() bool { return a.err != nil })
			}
		}
	}
	idleAfter := time.Since(start)
	rawOpen := 0
	for _, c := range raw {
		if waitClosed(c, time.Now(), time.Until(deadline)) < 0 {
			rawOpen++
		}
		c.Close()
	}
	slow.waitFor(time.Until(deadline), func() bool { return slow.err != nil })
	slowAfter := time.Since(slowStart)
	close(stopWatch)
	<-watchDone
	left := xdsDescriptors(t, port)
	t.Logf("idle connections closed by the server within %s (idle timeout 1s, handshake timeout %s); TCP/TLS-only still open after 10s: %d; "+
		"a held Join body closed after %s (maximum age 2s ±10%% + grace 0.5s + grpc-go's 1s wait before closing)",
		idleAfter.Round(time.Millisecond), handshakeTimeout, rawOpen, slowAfter.Round(time.Millisecond))
	if !allClosed() || rawOpen > 0 {
		t.Errorf("idle connections without a certificate still open after 10s (raw %d)", rawOpen)
	}
	if slow.err == nil || slowAfter > 8*time.Second {
		t.Errorf("a held Join body was not cut by the maximum age (after %s)", slowAfter)
	}
	// The bound, exactly: the connections the limiter held at once, as
	// meshca reports them. Besides those without a certificate, only n1's
	// and n2's node connections. An eviction happens only when the
	// connections without a certificate fill their limit.
	text := scrape(t, m)
	peakAll, okAll := sample(t, text, `meshca_connections_peak{listener="xds"}`)
	peakUnauth, okUnauth := sample(t, text, `meshca_connections_peak{listener="xds_unauthenticated"}`)
	openAll, _ := sample(t, text, `meshca_connections_open{listener="xds"}`)
	evicted := counter("connections_evicted") - evict0
	// The descriptors the server held are a second, looser figure: they
	// also count the connection just accepted before a victim is closed
	// to make room, and sockets closed but not yet released (Go releases a
	// descriptor once the goroutine blocked reading it has woken, later on
	// a loaded machine). They stay within the total limit.
	t.Logf("connections held at once, as the limiter counts them: %v without a certificate (limit %d; %d evicted to stay within it), %v in all (limit %d without a certificate + 2 nodes), %v open after the flood; "+
		"xDS descriptors at most %d during the flood (total limit %d), %d before, %d after",
		peakUnauth, maxUnauth, evicted, peakAll, maxUnauth, openAll, maxDescs.Load(), maxConns, nodeDescs, left)
	if !okAll || !okUnauth {
		t.Fatalf("meshca_connections_peak for xds not reported (all %t, without a certificate %t)", okAll, okUnauth)
	}
	if peakUnauth > maxUnauth || peakAll > maxUnauth+2 {
		t.Errorf("the server held %v connections without a certificate (limit %d) and %v in all (limit %d + 2 nodes)", peakUnauth, maxUnauth, peakAll, maxUnauth)
	}
	if evicted > 0 && peakUnauth != maxUnauth {
		t.Errorf("%d connections evicted, but at most %v without a certificate were counted, below the limit %d", evicted, peakUnauth, maxUnauth)
	}
	if maxDescs.Load() > maxConns {
		t.Errorf("the server held %d xDS descriptors, want <= %d", maxDescs.Load(), maxConns)
	}
	if _, fails := fetchOwn(t, sdsc, "n1", "web", 1); fails > 0 {
		t.Error("node n1 not served after the flood")
	}
	// meshca raised its descriptor limit to the hard limit at start, and
	// reports it.
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		t.Fatal(err)
	}
	maxFDs, ok := sample(t, scrape(t, m), "process_max_fds")
	t.Logf("process_max_fds %v (hard limit %d)", maxFDs, lim.Max)
	if !ok || uint64(maxFDs) != uint64(lim.Max) {
		t.Errorf("process_max_fds = %v (reported %t), want the hard limit %d", maxFDs, ok, lim.Max)
	}
}

// TestAttackDeltaSecretsEmptyTypeURL: on the standalone SDS service a delta
// request without a type URL means secrets; naming another node's secret
// that way is refused and audited like any other, and the node's own
// secret is served.
func TestAttackDeltaSecretsEmptyTypeURL(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	m.addIdentity("api")
	cert := m.joined("n1", "web")
	m.joined("n2", "api")
	sds := secretservice.NewSecretDiscoveryServiceClient(m.dial(cert))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for _, c := range []struct {
		name   string
		secret string
		denied bool
	}{
		{"another node's secret", secretName("api"), true},
		{"own secret", secretName("web"), false},
	} {
		before := m.denials(xds.ActionRequest)
		d, err := sds.DeltaSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n1"}, ResourceNamesSubscribe: []string{c.secret}}); err != nil {
			t.Fatal(err)
		}
		resp, err := d.Recv()
		after := m.denials(xds.ActionRequest)
		var names []string
		for _, r := range resp.GetResources() {
			names = append(names, r.GetName())
		}
		t.Logf("DeltaSecrets, empty type_url, %s: %v %v; denials audited %d -> %d", c.name, status.Code(err), names, before, after)
		if c.denied && (status.Code(err) != codes.PermissionDenied || after != before+1 || len(names) > 0) {
			t.Errorf("%s: got %v, resources %v, audited %d -> %d; want PermissionDenied, nothing, one record", c.name, err, names, before, after)
		}
		if !c.denied && (err != nil || !slices.Equal(names, []string{c.secret}) || after != before) {
			t.Errorf("%s: got %v, resources %v; want exactly the secret", c.name, err, names)
		}
	}
}

// stallConn passes the first budget bytes written, then blocks writes
// until release is closed: a client that stops in the middle of a message.
type stallConn struct {
	net.Conn
	budget  int
	release <-chan struct{}
}

func (s *stallConn) Write(p []byte) (int, error) {
	if len(p) <= s.budget {
		s.budget -= len(p)
		return s.Conn.Write(p)
	}
	n, err := s.Conn.Write(p[:s.budget])
	s.budget = 0
	if err != nil {
		return n, err
	}
	<-s.release
	return n, net.ErrClosed
}

// TestAttackXDSStalledCertificate: clients send a client certificate
// message of about 240 KiB (crypto/tls accepts up to 256 KiB) and stall
// before its end, from 136 connections at once. The handshakes in progress
// count against the limit for peers without a certificate, so what they
// hold stays under 64 MiB in all and 1 MiB per connection. The clients run
// in a child process (this test binary, see TestMain), so that the heap
// measured here is the server's alone.
func TestAttackXDSStalledCertificate(t *testing.T) {
	// A long handshake timeout, so that the stalled handshakes are still
	// held when measured however slowly the attacker starts.
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), nil,
		app.WithXDSLimits(func(l *xds.Limits) { l.HandshakeTimeout = time.Minute }))
	base := heapAfterGC()
	report := runAttacker(t, attackStalledTLS, m.app.XDS)
	descs := xdsDescriptors(t, portOf(t, m.app.XDS))
	// A connection just evicted releases its descriptor once the
	// goroutine reading it has woken: allow those closes to land (the
	// server announces nothing to wait for), within a bound.
	pollUntil(5*time.Second, 50*time.Millisecond, func() bool {
		descs = xdsDescriptors(t, portOf(t, m.app.XDS))
		return descs <= xds.DefaultMaxUnauthenticated+1
	})
	growth := int64(heapAfterGC()) - int64(base)
	perConn := float64(growth) / float64(max(descs, 1))
	t.Logf("stalled certificate messages (%s): xDS descriptors held %d; server heap growth after GC %.1f MiB (%.0f KiB per held connection)",
		report, descs, float64(growth)/(1<<20), perConn/1024)
	if growth > 64<<20 {
		t.Errorf("heap grew %d MiB, want <= 64 MiB", growth>>20)
	}
	if descs > xds.DefaultMaxUnauthenticated+1 {
		t.Errorf("%d handshakes held, limit %d", descs, xds.DefaultMaxUnauthenticated)
	}
	if descs < xds.DefaultMaxUnauthenticated/2 || perConn > 1<<20 {
		t.Errorf("%d handshakes held, %.0f KiB each: want at least %d held (or the test did not load the server) and <= 1 MiB each",
			descs, perConn/1024, xds.DefaultMaxUnauthenticated/2)
	}
	m.admin("GET", "/healthz", nil, nil, http.StatusOK)
}

// stalledCertClients opens 136 connections from 8 addresses, each of
// which sends 200 KiB of a 240 KiB client certificate message and stalls,
// and reports once all have stalled (or failed). The connections stay
// stalled until the process exits.
func stalledCertClients(addr string) string {
	const conns, addrs = 136, 8
	// A self-signed certificate padded with a 60 KiB extension, four times.
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{1, 3, 6, 1, 4, 1, 99999, 1}, Value: make([]byte, 60<<10)}}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return "certificate: " + err.Error()
	}
	padded := tls.Certificate{Certificate: [][]byte{der, der, der, der}, PrivateKey: key}
	release := make(chan struct{})
	var stalled sync.WaitGroup
	var dialed, early atomic.Int64
	for i := range conns {
		stalled.Add(1)
		go func() {
			raw, err := testkit.Dial(context.Background(), addr, fmt.Sprintf("127.0.0.%d", 40+i%addrs))
			if err != nil {
				early.Add(1)
				stalled.Done()
				return
			}
			defer raw.Close()
			dialed.Add(1)
			sc := &signalConn{stallConn: &stallConn{Conn: raw, budget: 200 << 10, release: release}, stalled: &stalled, early: &early}
			c := tls.Client(sc, &tls.Config{InsecureSkipVerify: true, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{padded}})
			_ = c.Handshake()
		}()
	}
	stalled.Wait()
	return fmt.Sprintf("%d connections from %d addresses, each stalled after 200 KiB of a %d KiB certificate message; %d closed by the server before that",
		dialed.Load(), addrs, 4*len(der)>>10, early.Load())
}

// signalConn marks stalled done the first time a write blocks, or when
// the connection fails before that (counted in early).
type signalConn struct {
	*stallConn
	stalled *sync.WaitGroup
	early   *atomic.Int64
	once    sync.Once
}

func (s *signalConn) Write(p []byte) (int, error) {
	if len(p) > s.budget {
		s.once.Do(s.stalled.Done)
	}
	n, err := s.stallConn.Write(p)
	if err != nil {
		s.fail()
	}
	return n, err
}

func (s *signalConn) Read(p []byte) (int, error) {
	n, err := s.stallConn.Read(p)
	if err != nil {
		s.fail()
	}
	return n, err
}

func (s *signalConn) fail() {
	s.once.Do(func() {
		s.early.Add(1)
		s.stalled.Done()
	})
}
