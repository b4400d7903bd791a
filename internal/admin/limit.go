package admin

import (
	"net"
	"sync"
)

// connLimit bounds the connections each of its listeners holds at once
// and counts them over all its listeners: beyond the bound, a listener's
// Accept waits until one of its connections closes, so the others wait in
// the kernel's backlog, holding no descriptor of meshca's. A connection
// counts from its Accept until its first Close; the descriptor of a closed
// socket can outlive that for a moment, until the goroutine blocked
// reading it wakes.
type connLimit struct {
	perListener int

	mu         sync.Mutex
	open, peak int
}

func newConnLimit(perListener int) *connLimit { return &connLimit{perListener: perListener} }

// counts returns the connections open now and the most that were open at
// once since the limit was made, over all its listeners.
func (c *connLimit) counts() (open, peak int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.open, c.peak
}

// listen returns ln held to the limit.
func (c *connLimit) listen(ln net.Listener) net.Listener {
	return &limitListener{Listener: ln, lim: c, sem: make(chan struct{}, c.perListener), done: make(chan struct{})}
}

func (c *connLimit) add(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.open += n
	c.peak = max(c.peak, c.open)
}

type limitListener struct {
	net.Listener
	lim       *connLimit
	sem       chan struct{} // a slot per connection this listener holds
	closeOnce sync.Once
	done      chan struct{}
}

// Accept waits for a free slot, then for a connection.
func (l *limitListener) Accept() (net.Conn, error) {
	select {
	case l.sem <- struct{}{}:
	case <-l.done:
		return nil, net.ErrClosed
	}
	c, err := l.Listener.Accept()
	if err != nil {
		<-l.sem
		return nil, err
	}
	l.lim.add(1)
	return &limitConn{Conn: c, l: l}, nil
}

func (l *limitListener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() { close(l.done) })
	return err
}

// limitConn gives its slot back at its first Close.
type limitConn struct {
	net.Conn
	l    *limitListener
	once sync.Once
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.lim.add(-1)
		<-c.l.sem
	})
	return err
}
