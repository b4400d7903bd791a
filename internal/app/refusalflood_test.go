package app_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/lograte"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// lineLog keeps every log line meshca writes, for counting.
type lineLog struct {
	mu    sync.Mutex
	lines []string
}

func (l *lineLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, s := range strings.Split(strings.TrimRight(string(p), "\n"), "\n") {
		l.lines = append(l.lines, s)
	}
	return len(p), nil
}

func (l *lineLog) count(sub string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			n++
		}
	}
	return n
}

// startMeshMTLS is startMesh with the mTLS admin listener on and the log
// kept in lines.
func startMeshMTLS(t *testing.T, clk *clock.Fake, lines *lineLog) *mesh {
	t.Helper()
	log := slog.New(slog.NewTextHandler(lines, &slog.HandlerOptions{Level: slog.LevelInfo}))
	return startMeshLogged(t, clk, filepath.Join(t.TempDir(), "data"), withAdminMTLS, log)
}

// workloadCert has meshca sign a CSR for identity name, as `meshca cert
// issue` does: a valid certificate from meshca's CA that is not a node's.
func (m *mesh) workloadCert(name string) *tls.Certificate {
	m.t.Helper()
	m.addIdentity(name)
	return m.issueCert(name)
}

// handshakes opens n TLS connections to addr presenting cert, 8 at a time,
// and reads each until the server closes it or sends an alert, so the
// server has decided on every one when it returns. It returns how many
// the server accepted.
func handshakes(t *testing.T, addr string, cert *tls.Certificate, n int) (accepted int) {
	t.Helper()
	var ok atomic.Int64
	connectEach(t, addr, n, func(raw net.Conn) {
		c := tls.Client(raw, &tls.Config{InsecureSkipVerify: true, Certificates: []tls.Certificate{*cert}, NextProtos: []string{"h2"}})
		if err := c.Handshake(); err == nil {
			// TLS 1.3: the server judges the client certificate after the
			// client's handshake ends; its verdict is an alert or the
			// server's first frames.
			if _, err := c.Read(make([]byte, 1)); err == nil {
				ok.Add(1)
			}
		}
	})
	return int(ok.Load())
}

// connectEach runs use on n new TCP connections to addr, 8 at a time, each
// closed after use returns (or 20 s after it opened), and returns when all
// have been used.
func connectEach(t *testing.T, addr string, n int, use func(net.Conn)) {
	t.Helper()
	var wg sync.WaitGroup
	next := make(chan struct{})
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range next {
				c, err := net.DialTimeout("tcp", addr, 10*time.Second)
				if err != nil {
					t.Errorf("dial: %v", err)
					continue
				}
				c.SetDeadline(time.Now().Add(20 * time.Second))
				use(c)
				c.Close()
			}
		}()
	}
	for i := 0; i < n; i++ {
		next <- struct{}{}
	}
	close(next)
	wg.Wait()
}

var refusalSeries = regexp.MustCompile(`(?m)^meshca_refusals_total\{action="([^"]+)",outcome="([^"]+)",reason="([^"]+)"\} (\S+)$`)

// refusals sums meshca_refusals_total by action.
func refusals(t *testing.T, m *mesh) map[string]int {
	t.Helper()
	out := map[string]int{}
	for _, mm := range refusalSeries.FindAllStringSubmatch(scrape(t, m), -1) {
		v, err := strconv.ParseFloat(mm[4], 64)
		if err != nil {
			t.Fatal(err)
		}
		out[mm[1]] += int(v)
	}
	return out
}

// refusalsOf reads meshca_refusals_total of one action and outcome, summed
// over reasons.
func refusalsOf(t *testing.T, m *mesh, action, outcome string) int {
	t.Helper()
	n := 0
	for _, mm := range refusalSeries.FindAllStringSubmatch(scrape(t, m), -1) {
		if mm[1] != action || mm[2] != outcome {
			continue
		}
		v, err := strconv.ParseFloat(mm[4], 64)
		if err != nil {
			t.Fatal(err)
		}
		n += int(v)
	}
	return n
}

func sum(m map[string]int) int {
	n := 0
	for _, v := range m {
		n += v
	}
	return n
}

// refusalRecords counts audit records after seq that are not successes,
// by action.
func refusalRecords(m *mesh, after uint64) map[string]int {
	var evs []api.AuditEvent
	m.admin("GET", fmt.Sprintf("%s?after=%d", api.PathAudit, after), nil, &evs, http.StatusOK)
	out := map[string]int{}
	for _, e := range evs {
		if e.Outcome != "ok" {
			out[e.Action]++
		}
	}
	return out
}

func lastSeq(m *mesh) uint64 {
	evs := m.audit()
	if len(evs) == 0 {
		return 0
	}
	return evs[len(evs)-1].Seq
}

// flushRefusals moves the fake clock past the aggregation interval and
// waits until the interval's summaries are in the audit log.
func flushRefusals(t *testing.T, m *mesh, clk *clock.Fake, after uint64, want int) map[string]int {
	t.Helper()
	// The refusal recorder writes the summaries before it waits on the clock again.
	advance(t, clk, denials.DefaultInterval)
	return refusalRecords(m, after)
}

// TestRefusalFloodsAreBounded refuses workload certificates on the xDS
// port and on the mTLS admin port, a revoked node's old certificate, and
// malformed renewals, 200 to 1,000 times each (MESHCA_SOAK=1: 2,000; a
// handshake costs 7-20 ms on a loaded 2-core machine): metrics count every
// refusal, the
// audit log holds a record at once and a summary per source and reason,
// and the log holds at most lograte.DefaultBurst handshake errors a
// minute.
func TestRefusalFloodsAreBounded(t *testing.T) {
	handshakesN, revokedN, renewalsN := 500, 200, 1000
	if testkit.Soak() {
		handshakesN, revokedN, renewalsN = 2000, 2000, 2000
	}
	clk := clock.NewFake(time.Now())
	lines := &lineLog{}
	m := startMeshMTLS(t, clk, lines)
	workload := m.workloadCert("web")
	m.addIdentity("echo")
	revoked := m.joined("gone", "echo")
	live := m.joined("live", "echo")
	m.admin("POST", api.PathNodes+"/gone/revoke", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)

	type flood struct {
		name       string
		n          int
		run        func(n int) int // returns how many were accepted
		maxRecords int             // audit records in all, at once and after one interval
		each       int             // refusals per attempt, if not 1
	}
	// Per source and reason: one record at once, one summary.
	const perSource = 2
	floods := []flood{
		{"workload certificate on the xDS port", handshakesN, func(n int) int { return handshakes(t, m.app.XDS, workload, n) }, perSource, 1},
		{"workload certificate on the mTLS admin port", handshakesN, func(n int) int { return handshakes(t, m.app.AdminMTLS, workload, n) }, perSource, 1},
		// A revoked node's genuine certificate completes the handshake so
		// that its calls can be told why they are refused: each connection
		// is refused twice, at the handshake and at its call.
		{"revoked node's certificate on the xDS port", revokedN, func(n int) int {
			ok := 0
			for i := 0; i < n; i++ {
				conn, err := grpc.NewClient(m.app.XDS, grpc.WithTransportCredentials(credentials.NewTLS(m.serverTLS(revoked))))
				if err != nil {
					t.Fatal(err)
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var resp nodeapi.JoinResponse
				err = conn.Invoke(ctx, nodeapi.FullRenewMethod, &nodeapi.RenewRequest{CSRPEM: "x"}, &resp, grpc.ForceCodec(nodeapi.Codec{}))
				if err == nil {
					ok++
				} else if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "was revoked") {
					t.Errorf("call %d: %v, want PermissionDenied saying the node was revoked", i, err)
				}
				cancel()
				conn.Close()
			}
			return ok
		}, 2 * perSource, 2},
		{"malformed renewals of a live node", renewalsN, func(n int) int {
			conn := m.dial(live)
			ok := 0
			for i := 0; i < n; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var resp nodeapi.JoinResponse
				if err := conn.Invoke(ctx, nodeapi.FullRenewMethod, &nodeapi.RenewRequest{CSRPEM: "not a CSR"}, &resp, grpc.ForceCodec(nodeapi.Codec{})); err == nil {
					ok++
				}
				cancel()
			}
			return ok
		}, perSource, 1},
		// Every join names another node: each is a new source, up to the
		// 128 tracked at once; the rest fold into one "other" record.
		{"unauthenticated joins, each for another node", renewalsN, func(n int) int {
			conn := m.dial(nil)
			ok := 0
			for i := 0; i < n; i++ {
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				var resp nodeapi.JoinResponse
				req := &nodeapi.JoinRequest{Node: fmt.Sprintf("made-up-%d", i), Token: "guess", CSRPEM: "x"}
				if err := conn.Invoke(ctx, nodeapi.FullJoinMethod, req, &resp, grpc.ForceCodec(nodeapi.Codec{})); err == nil {
					ok++
				}
				cancel()
			}
			return ok
		}, 128 + 1, 1},
	}
	for _, f := range floods {
		t.Run(f.name, func(t *testing.T) {
			n := f.n
			seq, before := lastSeq(m), refusals(t, m)
			start := time.Now()
			if ok := f.run(n); ok != 0 {
				t.Fatalf("%d of %d accepted", ok, n)
			}
			took := time.Since(start)
			after := refusals(t, m)
			counted := sum(after) - sum(before)
			if want := n * max(f.each, 1); counted != want {
				t.Errorf("metrics counted %d refusals, want exactly %d (before %v, after %v)", counted, want, before, after)
			}
			atOnce := refusalRecords(m, seq)
			got := flushRefusals(t, m, clk, seq, sum(atOnce)+1)
			if sum(atOnce) < 1 || sum(got) > f.maxRecords {
				t.Errorf("audit records: %v at once, %v after the interval; want 1..%d in all for %d refusals", atOnce, got, f.maxRecords, n)
			}
			t.Logf("%d refusals in %s: metric +%d %v, audit records %d at once, %d after one interval %v",
				n, took.Round(time.Millisecond), counted, diff(after, before), sum(atOnce), sum(got), got)
		})
	}

	t.Run("malformed connections to the mTLS admin port", func(t *testing.T) {
		logged := lines.count("TLS handshake error")
		start := time.Now()
		const conns = 1000
		connectEach(t, m.app.AdminMTLS, conns, func(c net.Conn) {
			// A TLS record header announcing a handshake, then junk.
			c.Write([]byte("\x16\x03\x01\x00\x08\x01\x00\x00\x04junk"))
			io.Copy(io.Discard, c) // until the server closes: it has logged by then
		})
		got := lines.count("TLS handshake error") - logged
		if got > lograte.DefaultBurst || lines.count("TLS handshake error") == 0 {
			t.Fatalf("%d handshake-error log lines for %d malformed connections (plus %d before), want 1..%d a minute", got, conns, logged, lograte.DefaultBurst)
		}
		t.Logf("%d malformed connections in %s: %d log lines (before them: %d; at most %d a minute)", conns, time.Since(start).Round(time.Millisecond), got, logged, lograte.DefaultBurst)
	})
}

func diff(after, before map[string]int) map[string]int {
	out := map[string]int{}
	for k, v := range after {
		if d := v - before[k]; d != 0 {
			out[k] = d
		}
	}
	return out
}
