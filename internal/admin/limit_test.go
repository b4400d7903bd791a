package admin

import (
	"errors"
	"net"
	"testing"
	"time"
)

// TestConnLimitCountsExact: over loopback, the limit accepts no more than
// its bound, counts each accepted connection until its first Close (a
// second Close changes nothing), remembers the most it held at once, and
// accepts a waiting connection as soon as a slot frees.
func TestConnLimitCountsExact(t *testing.T) {
	const limit, clients = 3, 5
	lim := newConnLimit(limit)
	raw, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ln := lim.listen(raw)
	accepted := make(chan net.Conn, clients)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	for range clients {
		c, err := net.DialTimeout("tcp", raw.Addr().String(), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
	}
	next := func(what string) net.Conn {
		t.Helper()
		select {
		case c := <-accepted:
			return c
		case <-time.After(10 * time.Second):
			t.Fatalf("%s: not accepted within 10s", what)
			return nil
		}
	}
	check := func(what string, open, peak int) {
		t.Helper()
		if o, p := lim.counts(); o != open || p != peak {
			t.Fatalf("%s: counts %d open, %d at most; want %d, %d", what, o, p, open, peak)
		}
	}

	var held []net.Conn
	for range limit {
		held = append(held, next("within the limit"))
	}
	check("the limit reached", limit, limit)
	// The fourth waits: the window can only miss an excess, not invent one.
	select {
	case <-accepted:
		t.Fatalf("accepted a connection beyond the limit of %d", limit)
	case <-time.After(200 * time.Millisecond):
	}
	check("clients waiting", limit, limit)

	held[0].Close()
	held[0].Close()
	fourth := next("after a close")
	check("a close, twice, and the next accepted", limit, limit)
	for _, c := range append(held[1:], fourth) {
		c.Close()
	}
	fifth := next("after every close")
	check("all closed but the last accepted", 1, limit)
	fifth.Close()
	check("all closed", 0, limit)

	ln.Close()
	select {
	case err := <-acceptErr:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept after Close: %v, want net.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept still blocked 10s after the listener closed")
	}
	t.Logf("limit %d, %d clients: %d held at once, none beyond; each close (twice for one) freed exactly one slot; 0 open at the end", limit, clients, limit)
}

// TestConnLimitPerListener: the bound holds per listener (a flood of one
// TLS listener cannot take another's slots) and the counts add up over
// both.
func TestConnLimitPerListener(t *testing.T) {
	lim := newConnLimit(1)
	var held []net.Conn
	for range 2 {
		raw, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ln := lim.listen(raw)
		defer ln.Close()
		for range 2 {
			c, err := net.DialTimeout("tcp", raw.Addr().String(), 5*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
		}
		accepted := make(chan net.Conn, 1)
		go func() {
			if c, err := ln.Accept(); err == nil {
				accepted <- c
			}
		}()
		select {
		case c := <-accepted:
			held = append(held, c)
		case <-time.After(10 * time.Second):
			t.Fatalf("listener %d accepted nothing within 10s while the other held its one slot", len(held)+1)
		}
	}
	if open, peak := lim.counts(); open != 2 || peak != 2 {
		t.Fatalf("two listeners holding one each: counts %d open, %d at most; want 2, 2", open, peak)
	}
	for _, c := range held {
		c.Close()
	}
	if open, peak := lim.counts(); open != 0 || peak != 2 {
		t.Fatalf("after the closes: counts %d open, %d at most; want 0, 2", open, peak)
	}
}
