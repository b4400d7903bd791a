package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"sync"
	"syscall"
	"time"
)

// gate accepts the xDS port's connections, holds them to the Limits, runs
// the TLS handshake itself and hands each connection to the gRPC server
// for its kind of peer: nodes (a verified node certificate) to the main
// server, everyone else to the join server. grpc-go reads a whole message
// of up to MaxRecvMsgSize before any interceptor runs, and its limits are
// per server; deciding before gRPC sees the connection is what keeps a
// peer without a certificate to the join server's small ones.
type gate struct {
	s      *Server
	ln     net.Listener
	tls    *tls.Config
	nodes  *handoff
	joins  *handoff
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

func newGate(s *Server, ln net.Listener) *gate {
	ctx, cancel := context.WithCancel(context.Background())
	return &gate{s: s, ln: ln, tls: s.tlsConfig(), nodes: newHandoff(ln.Addr()), joins: newHandoff(ln.Addr()), ctx: ctx, cancel: cancel}
}

// run accepts until the listener fails or close is called. A failure
// closes both hand-offs, so that the gRPC servers return it too.
func (g *gate) run() error {
	defer g.nodes.close()
	defer g.joins.close()
	var backoff time.Duration
	for {
		raw, err := g.ln.Accept()
		if err != nil {
			if g.ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
				// Out of descriptors (the limits should prevent it): wait
				// for connections to close rather than spin.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				g.s.log.Warn("xDS accept failed; retrying", "err", err, "retry_in", backoff)
				select {
				case <-time.After(backoff):
				case <-g.ctx.Done():
					return nil
				}
				continue
			}
			return err
		}
		backoff = 0
		setUserTimeout(raw, keepaliveTimeout)
		t := &trackedConn{Conn: raw, set: &g.s.conns, lim: g.s.lim, addr: addressKey(raw.RemoteAddr()), admitted: time.Now()}
		if !g.waitCrowd(t) {
			raw.Close()
			return nil
		}
		victim, ok := g.s.lim.admit(t)
		if victim != nil {
			g.s.stats.connEvicted.Add(1)
			victim.Close()
		}
		if !ok {
			g.s.stats.connRefused.Add(1)
			raw.Close()
			continue
		}
		g.wg.Add(1)
		go func() {
			defer g.wg.Done()
			g.handshake(t)
		}()
	}
}

// waitCrowd holds t, not yet admitted, while the limiter is full of the
// handshakes of a crowd of peers (see Limits.MaxUnauthenticated), and returns false
// if the gate closes meanwhile.
func (g *gate) waitCrowd(t *trackedConn) bool {
	for {
		wait, freed := g.s.lim.crowded(t)
		if wait <= 0 {
			return true
		}
		timer := time.NewTimer(wait)
		select {
		case <-freed:
		case <-timer.C:
		case <-g.ctx.Done():
			timer.Stop()
			return false
		}
		timer.Stop()
		t.admitted = time.Now()
	}
}

// handshake runs TLS on t and hands the connection on. Refusals close t
// underneath TLS: no alert is written to a peer that may not be reading.
func (g *gate) handshake(t *trackedConn) {
	cfg := g.tls.Clone()
	var revoked bool
	cfg.VerifyConnection = g.s.verifyConnection(&revoked)
	conn := tls.Server(t, cfg)
	_ = t.SetDeadline(time.Now().Add(g.s.limits.HandshakeTimeout))
	err := conn.HandshakeContext(g.ctx)
	_ = t.SetDeadline(time.Time{})
	if err != nil {
		t.Close()
		return
	}
	st := conn.ConnectionState()
	if st.NegotiatedProtocol != "h2" {
		t.Close() // gRPC needs HTTP/2, agreed by ALPN
		return
	}
	to := g.joins
	if len(st.PeerCertificates) > 0 && !revoked {
		// VerifyConnection accepted the chain: an active node's. A revoked
		// node's certificate buys no more than none: the join server, the
		// limits of peers without a certificate, and refusals that say why.
		node, err := nodeName(st.PeerCertificates[0])
		if err != nil {
			t.Close()
			return
		}
		g.s.lim.authenticated(t)
		t.serial = leafSerial(st.PeerCertificates[0])
		if !g.s.conns.track(node, t, maxConnectionsPerNode) {
			g.s.stats.connPerNode.Add(1)
			t.Close()
			return
		}
		to = g.nodes
	} else if !g.s.lim.anonymous(t) {
		g.s.stats.connPerAddress.Add(1)
		t.Close()
		return
	}
	if !to.give(g.ctx, conn) {
		t.Close()
	}
}

// close stops accepting and ends handshakes in progress; connections
// already handed off belong to the gRPC servers.
func (g *gate) close() {
	g.cancel()
	g.ln.Close()
	g.wg.Wait()
}

// handoff is the net.Listener a gRPC server serves: it yields the
// connections the gate gives it.
type handoff struct {
	addr   net.Addr
	conns  chan net.Conn
	done   chan struct{}
	closed sync.Once
}

func newHandoff(addr net.Addr) *handoff {
	return &handoff{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

var _ net.Listener = (*handoff)(nil)

func (h *handoff) give(ctx context.Context, c net.Conn) bool {
	select {
	case h.conns <- c:
		return true
	case <-h.done:
	case <-ctx.Done():
	}
	return false
}

func (h *handoff) Accept() (net.Conn, error) {
	select {
	case c := <-h.conns:
		return c, nil
	case <-h.done:
		return nil, net.ErrClosed
	}
}

func (h *handoff) close() { h.closed.Do(func() { close(h.done) }) }

func (h *handoff) Close() error { h.close(); return nil }

func (h *handoff) Addr() net.Addr { return h.addr }
