package xds

import (
	"container/list"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// handshaken are the credentials of both gRPC servers: the gate has already
// run the TLS handshake, so they only report its result. The connection
// state carries the node certificate that peerNode reads back.
type handshaken struct{}

var _ credentials.TransportCredentials = handshaken{}

var errNotTLS = errors.New("connection did not come through the TLS gate")

func (handshaken) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	tc, ok := c.(*tls.Conn)
	if !ok {
		c.Close()
		return nil, nil, errNotTLS
	}
	return c, credentials.TLSInfo{State: tc.ConnectionState(), CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity}}, nil
}

func (handshaken) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errNotTLS
}

func (handshaken) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "tls", SecurityVersion: "1.2"}
}

func (h handshaken) Clone() credentials.TransportCredentials { return h }

func (handshaken) OverrideServerName(string) error { return nil }

// nodeConns holds the open connections of each node, so that a revoked
// node's connections can be closed: closing the connection is what ends a
// stream blocked in Recv (the SotW loop of go-control-plane watches only
// its server's context), without a goroutine per stream waiting for that.
type nodeConns struct {
	mu    sync.Mutex
	conns map[string]map[*trackedConn]struct{}
}

// trackedConn is an accepted TCP connection, under TLS: closing the TLS
// connection closes (and forgets) it, while revocation and eviction close
// it underneath TLS, so no alert is written to a peer that may not be
// reading.
type trackedConn struct {
	net.Conn
	set  *nodeConns
	lim  *limiter
	once sync.Once

	node string // under set.mu; "" until tracked
	// serial is the serial (lowercase hex) of the node certificate the
	// connection was made with, set before it is tracked.
	serial string

	// admitted is when the accept loop admitted it (or last tried to);
	// written only by that loop before admit, read under lim.mu.
	admitted time.Time

	// under lim.mu
	elem    *list.Element // in lim.unauth while unauthenticated
	addr    netip.Prefix
	counted bool // in lim.perAddr
	gone    bool // slot given back
}

func (t *trackedConn) Close() error {
	t.once.Do(func() {
		t.set.forget(t)
		t.lim.release(t)
	})
	return t.Conn.Close()
}

// track records t as node's, unless node already holds limit connections.
func (n *nodeConns) track(node string, t *trackedConn, limit int) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns == nil {
		n.conns = map[string]map[*trackedConn]struct{}{}
	}
	if len(n.conns[node]) >= limit {
		return false
	}
	if n.conns[node] == nil {
		n.conns[node] = map[*trackedConn]struct{}{}
	}
	t.node = node
	n.conns[node][t] = struct{}{}
	return true
}

func (n *nodeConns) forget(t *trackedConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if t.node == "" {
		return
	}
	delete(n.conns[t.node], t)
	if len(n.conns[t.node]) == 0 {
		delete(n.conns, t.node)
	}
}

// closeExcept closes the connections of node made with a certificate
// whose serial is not in keep, and returns how many it closed.
func (n *nodeConns) closeExcept(node string, keep []string) int {
	n.mu.Lock()
	var cs []*trackedConn
	for t := range n.conns[node] {
		if !slices.Contains(keep, t.serial) {
			cs = append(cs, t)
		}
	}
	n.mu.Unlock()
	for _, t := range cs {
		t.Close()
	}
	return len(cs)
}

// close closes every connection of node and returns how many there were.
func (n *nodeConns) close(node string) int {
	n.mu.Lock()
	var cs []*trackedConn
	for t := range n.conns[node] {
		cs = append(cs, t)
	}
	n.mu.Unlock()
	for _, t := range cs {
		t.Close()
	}
	return len(cs)
}
