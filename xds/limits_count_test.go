package xds

import (
	"math/rand/v2"
	"net"
	"slices"
	"testing"
)

// TestLimiterCountsExact drives the limiter through random admissions,
// evictions, handshakes (with and without a certificate) and closes,
// repeated closes included, and checks after every step that the
// connections it counts, now and at most at once, are exactly those a
// plain model of the same steps holds open: the figure the connection
// flood tests assert is the limiter's, not an estimate.
func TestLimiterCountsExact(t *testing.T) {
	const maxAll, maxUnauth, perAddr, steps = 12, 7, 3, 5000
	l := newLimiter(Limits{MaxConnections: maxAll, MaxUnauthenticated: maxUnauth, MaxUnauthenticatedPerAddress: perAddr}.withDefaults())
	addrs := make([]string, 4)
	for i := range addrs {
		addrs[i] = net.IPv4(192, 0, 2, byte(i+1)).String()
	}
	seed := uint64(20261202)
	rng := rand.New(rand.NewPCG(seed, seed))

	// The model: the connections open, whether each has shown a node
	// certificate, and the last few closed (closed again at times).
	var (
		open                   []*trackedConn
		node                   = map[*trackedConn]bool{}
		closed                 []*trackedConn
		peakAll, peakUnauth    int
		admitted, evicted      int
		refused, releasedTwice int
	)
	count := func() (all, unauth int) {
		for _, c := range open {
			if !node[c] {
				unauth++
			}
		}
		return len(open), unauth
	}
	closeModel := func(c *trackedConn) {
		i := slices.Index(open, c)
		open = slices.Delete(open, i, i+1)
		if closed = append(closed, c); len(closed) > 16 {
			closed = closed[1:]
		}
	}
	pickUnauth := func() *trackedConn {
		var from []*trackedConn
		for _, c := range open {
			if !node[c] {
				from = append(from, c)
			}
		}
		if len(from) == 0 {
			return nil
		}
		return from[rng.IntN(len(from))]
	}
	for step := range steps {
		switch op := rng.IntN(10); {
		case op < 4: // a new connection
			c := &trackedConn{set: &nodeConns{}, lim: l, addr: addressKey(&net.TCPAddr{IP: net.ParseIP(addrs[rng.IntN(len(addrs))])})}
			victim, ok := l.admit(c)
			if victim != nil {
				if !slices.Contains(open, victim) || node[victim] {
					t.Fatalf("step %d: evicted a connection that is not an open one without a certificate", step)
				}
				closeModel(victim)
				evicted++
			}
			if !ok {
				if _, unauth := count(); unauth > 0 {
					t.Fatalf("step %d: refused while %d connections without a certificate could make room", step, unauth)
				}
				refused++
				continue
			}
			open = append(open, c)
			admitted++
		case op < 6: // a handshake shows a node certificate
			if c := pickUnauth(); c != nil {
				l.authenticated(c)
				node[c] = true
			}
		case op < 7: // a handshake ends without one
			if c := pickUnauth(); c != nil {
				l.anonymous(c)
			}
		default: // a close, of an open connection or of one already closed
			if len(closed) > 0 && (rng.IntN(4) == 0 || len(open) == 0) {
				l.release(closed[rng.IntN(len(closed))])
				releasedTwice++
				break
			}
			if len(open) > 0 {
				c := open[rng.IntN(len(open))]
				l.release(c)
				closeModel(c)
			}
		}
		all, unauth := count()
		peakAll, peakUnauth = max(peakAll, all), max(peakUnauth, unauth)
		now, peak := l.counts()
		if now != (connCounts{all: all, unauth: unauth}) || peak != (connCounts{all: peakAll, unauth: peakUnauth}) {
			t.Fatalf("step %d: the limiter counts %+v now, %+v at most; the model %d (%d without a certificate) now, %d (%d) at most",
				step, now, peak, all, unauth, peakAll, peakUnauth)
		}
		if total, u := l.open(); total != all || u != unauth {
			t.Fatalf("step %d: open() = %d, %d; want %d, %d", step, total, u, all, unauth)
		}
	}
	_, peak := l.counts()
	t.Logf("%d steps (seed %d): %d admitted, %d evicted, %d refused, %d closes of closed connections; counts equal the model's at every step; at most %d open (limit %d), %d without a certificate (limit %d)",
		steps, seed, admitted, evicted, refused, releasedTwice, peak.all, maxAll, peak.unauth, maxUnauth)
	if peak.all != maxAll || peak.unauth != maxUnauth {
		t.Errorf("the steps did not fill the limiter: at most %+v, limits %d and %d", peak, maxAll, maxUnauth)
	}
}
