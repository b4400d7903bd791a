package xds

import (
	"container/list"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"time"
)

// Defaults of Limits.
const (
	DefaultMaxConnections               = 16384
	DefaultMaxUnauthenticated           = 128
	DefaultMaxUnauthenticatedPerAddress = 16
	DefaultIdleTimeout                  = 5 * time.Minute
	DefaultUnauthenticatedIdleTimeout   = 10 * time.Second
	DefaultUnauthenticatedMaxAge        = 30 * time.Second
)

// What one connection without a node certificate may make the join server
// hold: a join request is a few KiB (a CSR with a thousand SANs is 28 KiB).
// Per connection that is at most joinMaxStreams messages of
// joinMaxRecvMsgSize plus as much unread data per stream (the flow-control
// window, kept static so that it cannot grow), well under 1 MiB; times
// DefaultMaxUnauthenticated, under 64 MiB.
const (
	joinMaxRecvMsgSize    = 64 << 10
	joinMaxStreams        = 2
	joinWindow            = 64 << 10
	joinMaxHeaderListSize = 8 << 10
	maxHeaderListSize     = 16 << 10
)

// maxConnectionsPerNode bounds one node's connections: an Envoy opens one
// for ADS and one per worker thread for the access-log and metrics sinks.
// Without it one node certificate (a stolen copy, a proxy in a reconnect
// loop) could take every slot of MaxConnections and lock the other nodes
// out.
const maxConnectionsPerNode = 64

// Limits bound what peers can make the server hold. A peer without a node
// certificate (a joining node, or anyone at all) is served by a separate
// gRPC server that knows only Join, with small buffers and short timeouts,
// so that all such peers together hold a small fixed amount. Zero fields
// take the defaults.
type Limits struct {
	// MaxConnections bounds all open connections, handshakes included. It
	// must leave descriptors for the admin API and the store.
	MaxConnections int
	// MaxUnauthenticated bounds the connections without a node
	// certificate, handshakes in progress included. When it is reached
	// (or MaxConnections is), the oldest such connection of the address
	// holding the most of them is closed to make room: a flood cannot lock
	// nodes out, nor evict the handshakes of nodes at other addresses, it
	// can only make peers without a certificate reconnect. When every
	// address holds just one (a crowd), none is closed before its
	// HandshakeTimeout: new connections wait to be accepted until a slot
	// frees. Peers at that many addresses can then delay new connections
	// (never the nodes already connected) by up to HandshakeTimeout.
	MaxUnauthenticated int
	// MaxUnauthenticatedPerAddress bounds connections without a node
	// certificate per remote address (per /64 for IPv6); one beyond it is
	// closed as soon as its handshake shows it has no certificate.
	MaxUnauthenticatedPerAddress int
	// HandshakeTimeout bounds the TLS handshake, and then the HTTP/2
	// preface.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a node's connection that has had no stream for
	// this long (gRPC clients reconnect when they need to).
	IdleTimeout time.Duration
	// UnauthenticatedIdleTimeout closes a connection without a node
	// certificate that has had no stream for this long, and
	// UnauthenticatedMaxAge closes it whatever it does (its calls get a
	// quarter of that again to finish).
	UnauthenticatedIdleTimeout time.Duration
	UnauthenticatedMaxAge      time.Duration
	// MaxSigning bounds the agent CSRs signed at once (default
	// DefaultMaxSigning), and MaxSignQueue
	// those waiting for a turn, each only while its caller waits (default
	// DefaultMaxSignQueue). A CSR beyond the queue, or beyond
	// maxSignPerNode of one node, is refused at once with
	// ResourceExhausted; the agent retries with backoff.
	MaxSigning   int
	MaxSignQueue int
}

func (l Limits) withDefaults() Limits {
	set := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	setD := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	set(&l.MaxConnections, DefaultMaxConnections)
	set(&l.MaxUnauthenticated, DefaultMaxUnauthenticated)
	set(&l.MaxUnauthenticatedPerAddress, DefaultMaxUnauthenticatedPerAddress)
	setD(&l.HandshakeTimeout, ConnectionTimeout)
	setD(&l.IdleTimeout, DefaultIdleTimeout)
	setD(&l.UnauthenticatedIdleTimeout, DefaultUnauthenticatedIdleTimeout)
	setD(&l.UnauthenticatedMaxAge, DefaultUnauthenticatedMaxAge)
	set(&l.MaxSigning, max(DefaultMaxSigning, 2*runtime.GOMAXPROCS(0)))
	set(&l.MaxSignQueue, DefaultMaxSignQueue)
	l.MaxUnauthenticated = min(l.MaxUnauthenticated, l.MaxConnections)
	l.MaxUnauthenticatedPerAddress = min(l.MaxUnauthenticatedPerAddress, l.MaxUnauthenticated)
	return l
}

// limiter counts open connections. A connection is unauthenticated from
// accept until its handshake shows a node certificate.
type limiter struct {
	max, maxUnauth, maxPerAddr int
	handshakeTimeout           time.Duration

	mu          sync.Mutex
	total       int
	unauth      list.List            // *trackedConn, oldest first
	peak        connCounts           // the most open at once since start
	unauthAddrs map[netip.Prefix]int // unauth per address
	perAddr     map[netip.Prefix]int // handshakes done without a certificate, per address
	freed       chan struct{}        // closed when an unauthenticated slot frees; nil when nobody waits
}

func newLimiter(l Limits) *limiter {
	return &limiter{max: l.MaxConnections, maxUnauth: l.MaxUnauthenticated, maxPerAddr: l.MaxUnauthenticatedPerAddress,
		handshakeTimeout: l.HandshakeTimeout, unauthAddrs: map[netip.Prefix]int{}, perAddr: map[netip.Prefix]int{}}
}

// admit takes a slot for a new connection. It fails only when nodes hold
// every slot. A victim it returns is an unauthenticated connection, already
// uncounted, which the caller must close: the oldest of the address that
// holds the most, t's own included, so that one source making connections
// faster than handshakes finish evicts its own, not a node's handshake.
func (l *limiter) admit(t *trackedConn) (victim *trackedConn, ok bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total >= l.max || l.unauth.Len() >= l.maxUnauth {
		if l.unauth.Len() == 0 {
			return nil, false
		}
		victim = l.victim(t.addr)
		l.drop(victim)
	}
	l.total++
	t.elem = l.unauth.PushBack(t)
	l.unauthAddrs[t.addr]++
	l.peak.all = max(l.peak.all, l.total)
	l.peak.unauth = max(l.peak.unauth, l.unauth.Len())
	return victim, true
}

// crowded reports how long t should wait before admit: while the limiter
// is full of a crowd (every address, t's included, holds at most one
// connection without a certificate) and the oldest of them was admitted
// less than the handshake timeout before t.admitted. freed is closed as
// soon as a slot frees. Only the accept loop admits, so admit after a zero
// wait evicts a connection past its handshake timeout, or one of an
// address holding several, or none.
//
// A crowd is what the limiter sees when every address holds at most one
// connection without a node certificate: many peers at once, such as the
// nodes of a failed replica all reconnecting, rather than a flood from one
// source. Evicting the oldest handshake there only makes that node try
// again, and a crowd larger than MaxUnauthenticated on a busy server then
// keeps evicting its own handshakes before they finish: 1,000 nodes took
// 40 s to fail over on two cores with 18 of every 19 connections evicted,
// and a one-second grace before eviction still collapsed the same way
// under load. In a crowd the listener stops accepting until a slot frees
// (a handshake finishes, or its HandshakeTimeout ends it); the others wait
// in the kernel's listen backlog, in order.
func (l *limiter) crowded(t *trackedConn) (wait time.Duration, freed <-chan struct{}) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.total < l.max && l.unauth.Len() < l.maxUnauth || l.unauth.Len() == 0 {
		return 0, nil
	}
	if l.unauthAddrs[t.addr] > 0 {
		return 0, nil
	}
	for _, n := range l.unauthAddrs {
		if n > 1 {
			return 0, nil
		}
	}
	oldest := l.unauth.Front().Value.(*trackedConn)
	wait = oldest.admitted.Add(l.handshakeTimeout).Sub(t.admitted)
	if wait <= 0 {
		return 0, nil
	}
	if l.freed == nil {
		l.freed = make(chan struct{})
	}
	return wait, l.freed
}

// wake tells a connection waiting in crowded that a slot freed.
func (l *limiter) wake() {
	if l.freed != nil {
		close(l.freed)
		l.freed = nil
	}
}

// victim is the oldest unauthenticated connection of the address holding
// the most of them, counting one more for next's address. l.unauth is not
// empty.
func (l *limiter) victim(next netip.Prefix) *trackedConn {
	most := 0
	for a, n := range l.unauthAddrs {
		if a == next {
			n++
		}
		most = max(most, n)
	}
	for e := l.unauth.Front(); e != nil; e = e.Next() {
		c := e.Value.(*trackedConn)
		n := l.unauthAddrs[c.addr]
		if c.addr == next {
			n++
		}
		if n == most {
			return c
		}
	}
	return l.unauth.Front().Value.(*trackedConn) // not reached: some address holds the most
}

// authenticated moves t out of the unauthenticated connections.
func (l *limiter) authenticated(t *trackedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.forgetUnauth(t)
}

func (l *limiter) forgetUnauth(t *trackedConn) {
	if t.elem == nil {
		return
	}
	l.unauth.Remove(t.elem)
	t.elem = nil
	l.wake()
	if l.unauthAddrs[t.addr]--; l.unauthAddrs[t.addr] <= 0 {
		delete(l.unauthAddrs, t.addr)
	}
}

// anonymous counts t, whose handshake ended without a certificate, against
// its address; false when the address already has its maximum.
func (l *limiter) anonymous(t *trackedConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t.gone || l.perAddr[t.addr] >= l.maxPerAddr {
		return false
	}
	l.perAddr[t.addr]++
	t.counted = true
	return true
}

// release gives back t's slot; it is called once, when t is closed.
func (l *limiter) release(t *trackedConn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.drop(t)
}

func (l *limiter) drop(t *trackedConn) {
	if t.gone {
		return
	}
	t.gone = true
	l.total--
	l.wake()
	l.forgetUnauth(t)
	if t.counted {
		if l.perAddr[t.addr]--; l.perAddr[t.addr] <= 0 {
			delete(l.perAddr, t.addr)
		}
	}
}

// open returns the connections counted now: all, and unauthenticated.
func (l *limiter) open() (total, unauth int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total, l.unauth.Len()
}

// connCounts are connections the limiter holds: all of them, and those
// without a node certificate (handshakes included).
type connCounts struct{ all, unauth int }

// counts returns the connections open now and the most that were open at
// once since the limiter was made. A connection counts from its admission
// until its Close (or its eviction): the descriptor of a closed socket can
// outlive that for a moment, until the goroutine blocked reading it wakes,
// which the limiter neither sees nor needs to bound.
func (l *limiter) counts() (now, peak connCounts) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return connCounts{all: l.total, unauth: l.unauth.Len()}, l.peak
}

// addressKey is what the per-address limit counts by: the IP address, or
// its /64 for IPv6, where one host commonly holds a whole /64.
func addressKey(a net.Addr) netip.Prefix {
	tcp, ok := a.(*net.TCPAddr)
	if !ok {
		return netip.Prefix{}
	}
	ip, ok := netip.AddrFromSlice(tcp.IP)
	if !ok {
		return netip.Prefix{}
	}
	ip = ip.Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, _ := ip.Prefix(bits)
	return p
}
