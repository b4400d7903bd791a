package xds

import (
	"net"
	"testing"
)

// TestLimiterEvictsFromTheBusiestAddress: one address making connections
// faster than handshakes finish evicts its own oldest, never the handshake
// in progress of a peer at another address, even an older one.
func TestLimiterEvictsFromTheBusiestAddress(t *testing.T) {
	l := newLimiter(Limits{MaxConnections: 64, MaxUnauthenticated: 8, MaxUnauthenticatedPerAddress: 4}.withDefaults())
	node := &trackedConn{set: &nodeConns{}, lim: l, addr: addressKey(&net.TCPAddr{IP: net.ParseIP("192.0.2.1")})}
	flood := addressKey(&net.TCPAddr{IP: net.ParseIP("192.0.2.9")})
	if v, ok := l.admit(node); !ok || v != nil {
		t.Fatalf("first connection: victim %p, admitted %t", v, ok)
	}
	var mine []*trackedConn
	for i := range 100 {
		c := &trackedConn{set: &nodeConns{}, lim: l, addr: flood}
		v, ok := l.admit(c)
		if !ok {
			t.Fatalf("flood connection %d refused", i)
		}
		if v == node {
			t.Fatalf("flood connection %d evicted the other address's handshake", i)
		}
		if i >= 7 && v != mine[i-7] {
			t.Fatalf("flood connection %d evicted %p, want its address's oldest %p", i, v, mine[i-7])
		}
		mine = append(mine, c)
	}
	if total, unauth := l.open(); total != 8 || unauth != 8 {
		t.Fatalf("open = %d, %d; want 8, 8", total, unauth)
	}
	l.authenticated(node)
	if total, unauth := l.open(); total != 8 || unauth != 7 {
		t.Fatalf("after the node's handshake: open = %d, %d; want 8, 7", total, unauth)
	}
}
