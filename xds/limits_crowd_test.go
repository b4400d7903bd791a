package xds

import (
	"net"
	"testing"
	"time"
)

// TestLimiterCrowdWaits: when every address holds one connection without a
// certificate (a crowd of nodes reconnecting), a new one from yet another
// address waits for a slot instead of evicting a handshake in progress; a
// slot freeing wakes it, and once the oldest is past its handshake timeout
// it is evicted as before. A flood from one address is not a crowd: it
// evicts its own at once.
func TestLimiterCrowdWaits(t *testing.T) {
	l := newLimiter(Limits{MaxConnections: 64, MaxUnauthenticated: 3, MaxUnauthenticatedPerAddress: 2}.withDefaults())
	start := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	conn := func(ip string, at time.Duration) *trackedConn {
		return &trackedConn{set: &nodeConns{}, lim: l, addr: addressKey(&net.TCPAddr{IP: net.ParseIP(ip)}), admitted: start.Add(at)}
	}
	crowd := []*trackedConn{conn("192.0.2.1", 0), conn("192.0.2.2", 10*time.Millisecond), conn("192.0.2.3", 20*time.Millisecond)}
	for _, c := range crowd {
		if wait, _ := l.crowded(c); wait != 0 {
			t.Fatalf("below the limit: wait %s", wait)
		}
		if v, ok := l.admit(c); !ok || v != nil {
			t.Fatalf("below the limit: victim %p, admitted %t", v, ok)
		}
	}

	next := conn("192.0.2.4", 300*time.Millisecond)
	wait, freed := l.crowded(next)
	if want := ConnectionTimeout - 300*time.Millisecond; wait != want {
		t.Fatalf("full of a crowd: wait %s, want %s (until the oldest's handshake timeout)", wait, want)
	}
	select {
	case <-freed:
		t.Fatal("freed closed before any slot freed")
	default:
	}
	l.authenticated(crowd[1]) // a handshake finishes: its slot frees
	select {
	case <-freed:
	default:
		t.Fatal("a finished handshake did not wake the waiting connection")
	}
	if wait, _ := l.crowded(next); wait != 0 {
		t.Fatalf("with a free slot: wait %s", wait)
	}
	if v, ok := l.admit(next); !ok || v != nil {
		t.Fatalf("with a free slot: victim %p, admitted %t", v, ok)
	}

	late := conn("192.0.2.5", ConnectionTimeout+time.Millisecond)
	if wait, _ := l.crowded(late); wait != 0 {
		t.Fatalf("oldest past its handshake timeout: wait %s", wait)
	}
	if v, ok := l.admit(late); !ok || v != crowd[0] {
		t.Fatalf("oldest past its handshake timeout: victim %p, want the oldest %p", v, crowd[0])
	}

	// One address already holding a connection: no wait, its own oldest
	// makes room, however young.
	again := conn("192.0.2.5", ConnectionTimeout+2*time.Millisecond)
	if wait, _ := l.crowded(again); wait != 0 {
		t.Fatalf("second connection of one address: wait %s", wait)
	}
	if v, ok := l.admit(again); !ok || v != late {
		t.Fatalf("second connection of one address: victim %p, want its own %p", v, late)
	}
}
