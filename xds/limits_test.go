package xds

import (
	"net"
	"testing"
)

func TestLimiter(t *testing.T) {
	l := newLimiter(Limits{MaxConnections: 4, MaxUnauthenticated: 3, MaxUnauthenticatedPerAddress: 2}.withDefaults())
	a := addressKey(&net.TCPAddr{IP: net.ParseIP("192.0.2.1")})
	b := addressKey(&net.TCPAddr{IP: net.ParseIP("192.0.2.2")})
	conn := func(addr any) *trackedConn {
		t := &trackedConn{set: &nodeConns{}, lim: l}
		if addr == b {
			t.addr = b
		} else {
			t.addr = a
		}
		return t
	}
	admit := func(name string, c *trackedConn) *trackedConn {
		t.Helper()
		victim, ok := l.admit(c)
		if !ok {
			t.Fatalf("%s: refused", name)
		}
		return victim
	}

	// Nodes hold every slot: a new connection is refused.
	var nodes []*trackedConn
	for i := range 4 {
		n := conn(a)
		if v := admit("node", n); v != nil {
			t.Fatalf("node %d evicted a connection", i)
		}
		l.authenticated(n)
		nodes = append(nodes, n)
	}
	if _, ok := l.admit(conn(a)); ok {
		t.Fatal("admitted a connection while nodes held every slot")
	}
	for _, n := range nodes[1:] {
		l.release(n)
	}
	if total, unauth := l.open(); total != 1 || unauth != 0 {
		t.Fatalf("open = %d, %d after releasing 3 nodes; want 1, 0", total, unauth)
	}

	// Unauthenticated: the oldest makes room, never a node.
	u1, u2, u3 := conn(a), conn(a), conn(b)
	for _, u := range []*trackedConn{u1, u2, u3} {
		if v := admit("unauthenticated", u); v != nil {
			t.Fatalf("evicted %p below the limit", v)
		}
	}
	u4 := conn(b)
	if v := admit("fourth", u4); v != u1 {
		t.Fatalf("fourth unauthenticated evicted %p, want the oldest %p", v, u1)
	}
	if total, unauth := l.open(); total != 4 || unauth != 3 {
		t.Fatalf("open = %d, %d; want 4, 3", total, unauth)
	}
	l.release(u1) // its Close after eviction: counted once
	if total, _ := l.open(); total != 4 {
		t.Fatalf("releasing an evicted connection changed the total to %d", total)
	}

	// Per address, counted once the handshake shows no certificate.
	if !l.anonymous(u2) {
		t.Fatal("first connection of address a refused")
	}
	u5 := conn(a)
	if v := admit("fifth", u5); v != u2 {
		t.Fatalf("fifth evicted %p, want %p", v, u2)
	}
	if !l.anonymous(u5) {
		t.Fatal("address a after its only connection was evicted: refused")
	}
	if !l.anonymous(u3) || !l.anonymous(u4) {
		t.Fatal("address b's two connections refused")
	}
	u6 := conn(b)
	if v := admit("sixth", u6); v != u3 {
		t.Fatalf("sixth evicted %p, want %p", v, u3)
	}
	if !l.anonymous(u6) {
		t.Fatal("address b after one of its connections was evicted: refused")
	}
	l.release(u4)
	l.release(u4)
	if total, unauth := l.open(); total != 3 || unauth != 2 {
		t.Fatalf("open = %d, %d; want 3, 2", total, unauth)
	}

	// Beyond the address limit, while there is room in total.
	wide := newLimiter(Limits{MaxConnections: 10, MaxUnauthenticated: 5, MaxUnauthenticatedPerAddress: 2}.withDefaults())
	l = wide
	for i := range 3 {
		c := conn(b)
		admit("wide", c)
		if got := l.anonymous(c); got != (i < 2) {
			t.Fatalf("connection %d from one address: counted = %t, limit 2", i+1, got)
		}
	}
}

func TestAddressKey(t *testing.T) {
	tests := []struct {
		name, a, b string
		same       bool
	}{
		{"IPv4 addresses differ", "192.0.2.1", "192.0.2.2", false},
		{"IPv4 and its mapped form", "192.0.2.1", "::ffff:192.0.2.1", true},
		{"one IPv6 /64", "2001:db8::1", "2001:db8::ffff:1", true},
		{"two IPv6 /64s", "2001:db8::1", "2001:db8:0:1::1", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ka := addressKey(&net.TCPAddr{IP: net.ParseIP(tt.a), Port: 1})
			kb := addressKey(&net.TCPAddr{IP: net.ParseIP(tt.b), Port: 2})
			if (ka == kb) != tt.same {
				t.Errorf("%s -> %s, %s -> %s: same = %t, want %t", tt.a, ka, tt.b, kb, ka == kb, tt.same)
			}
		})
	}
}
