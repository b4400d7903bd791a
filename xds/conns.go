package xds

import (
	"net"
	"sync"

	"google.golang.org/grpc/credentials"
)

// nodeCreds wraps the server's TLS credentials to remember which node each
// connection belongs to, so that a revoked node's connections can be closed:
// closing the connection is what ends a stream blocked in Recv (the SotW
// loop of go-control-plane watches only its server's context), without a
// goroutine per stream waiting for that.
type nodeCreds struct {
	credentials.TransportCredentials
	s *Server
}

var _ credentials.TransportCredentials = (*nodeCreds)(nil)

func (c *nodeCreds) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	// TLS runs over the tracked connection, so closing the TLS connection
	// closes (and forgets) it, while revocation closes it underneath TLS:
	// no alert is written to a peer that may not be reading.
	t := &trackedConn{Conn: raw, set: &c.s.conns}
	conn, auth, err := c.TransportCredentials.ServerHandshake(t)
	if err != nil {
		return conn, auth, err
	}
	info, ok := auth.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return conn, auth, nil // joining: no node yet
	}
	node, err := nodeName(info.State.PeerCertificates[0])
	if err != nil {
		return conn, auth, nil // refused per call by the interceptors
	}
	c.s.conns.track(node, t)
	return conn, auth, nil
}

func (c *nodeCreds) Clone() credentials.TransportCredentials {
	return &nodeCreds{TransportCredentials: c.TransportCredentials.Clone(), s: c.s}
}

// nodeConns holds the open connections of each node.
type nodeConns struct {
	mu    sync.Mutex
	conns map[string]map[*trackedConn]struct{}
}

type trackedConn struct {
	net.Conn
	set  *nodeConns
	once sync.Once

	node string // under set.mu; "" until tracked
}

func (t *trackedConn) Close() error {
	t.once.Do(func() { t.set.forget(t) })
	return t.Conn.Close()
}

func (n *nodeConns) track(node string, t *trackedConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.conns == nil {
		n.conns = map[string]map[*trackedConn]struct{}{}
	}
	if n.conns[node] == nil {
		n.conns[node] = map[*trackedConn]struct{}{}
	}
	t.node = node
	n.conns[node][t] = struct{}{}
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
