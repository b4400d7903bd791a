package admin

import (
	"net"
	"sync"
)

// connLimit bounds the connections its listeners hold at once and counts
// them: beyond the bound, Accept waits until one closes, so the others
// wait in the kernel's backlog, holding no descriptor of meshca's. A
// connection counts from its Accept until its first Close; the
// descriptor of a closed socket can outlive that for a moment, until the
// goroutine blocked reading it wakes.
type connLimit struct {
	sem chan struct{}

	mu         sync.Mutex
	open, peak int
}

func newConnLimit(n int) *connLimit { return &connLimit{sem: make(chan struct{}, n)} }

// counts returns the connections open now and the most that were open at
// once since the limit was made.
func (c *connLimit) counts() (open, peak int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open, c.peak
}

// listen returns ln held to the limit.
func (c *connLimit) listen(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, lim: c, done: make(chan struct{})}
}

func (c *connLimit) acquired() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open++
	c.peak = max(c.peak, c.open)
}

func (c *connLimit) release() {
	c.mu.Lock()
	c.open--
	c.mu.Unlock()
	<-c.sem
}

type limitListener struct {
	net.Listener
	lim       *connLimit
	closeOnce sync.Once
	done      chan struct{}
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.lim.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.lim.sem
		return nil, err
	}
	l.lim.acquired()
	return &limitConn{Conn: c, lim: l.lim}, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// limitConn gives its slot back at its first Close.
type limitConn struct {
	net.Conn
	lim  *connLimit
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.lim.release)
	return err
}
