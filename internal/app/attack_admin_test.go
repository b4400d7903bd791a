package app_test

import (
	"crypto/tls"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// TestAttackAdminMTLSConnectionFlood: the mTLS admin port is reachable
// from outside; bare TCP connections that never send a byte hold the
// server's descriptors until its handshake timeout. They are bounded: the
// server holds at most admin.MaxMTLSConnections of them (the rest wait in
// the kernel's backlog, which costs meshca no descriptor), as its limiter
// counts them and reports in meshca_connections_peak, and the loopback
// admin API answers meanwhile.
func TestAttackAdminMTLSConnectionFlood(t *testing.T) {
	const flood = 300
	m := startMeshMTLS(t, clock.NewFake(time.Now()), &lineLog{})
	for i := range flood {
		c, err := net.DialTimeout("tcp", m.app.AdminMTLS, 5*time.Second)
		if err != nil {
			t.Fatalf("flood connection %d: %v", i, err)
		}
		defer c.Close()
	}
	// A handshake behind the flood waits in the backlog.
	raw, err := net.DialTimeout("tcp", m.app.AdminMTLS, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(2 * time.Second))
	herr := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}).Handshake()
	counts := func() (open, peak float64) {
		text := scrape(t, m)
		open, okOpen := sample(t, text, `meshca_connections_open{listener="admin_mtls"}`)
		peak, okPeak := sample(t, text, `meshca_connections_peak{listener="admin_mtls"}`)
		if !okOpen || !okPeak {
			t.Fatal("meshca_connections_open/peak for admin_mtls not reported")
		}
		return open, peak
	}
	// The accept loop takes connections as fast as the machine lets it:
	// wait until it holds as many as it may (the flood is larger).
	var open, peak float64
	full := pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
		open, peak = counts()
		return open >= admin.MaxMTLSConnections
	})
	held := xdsDescriptors(t, portOf(t, m.app.AdminMTLS))
	start := time.Now()
	var ca api.CA
	m.admin("GET", api.PathCA, nil, &ca, http.StatusOK)
	t.Logf("%d idle TCP connections to the mTLS admin port: the limiter holds %v at once, %v at most (limit %d); the server's descriptors for the port: %d; a handshake behind them: %v; loopback admin API answered in %s",
		flood, open, peak, admin.MaxMTLSConnections, held, herr, time.Since(start).Round(time.Millisecond))
	if !full || peak != admin.MaxMTLSConnections {
		t.Errorf("the mTLS admin port held %v connections at most (%v now), want exactly its limit %d under a flood of %d", peak, open, admin.MaxMTLSConnections, flood)
	}
	// The descriptors are a looser figure: a socket closed at its
	// handshake timeout keeps its descriptor until the goroutine blocked
	// reading it wakes, while the slot already went to the next.
	if held > 2*admin.MaxMTLSConnections {
		t.Errorf("the mTLS admin port holds %d descriptors, limit %d connections", held, admin.MaxMTLSConnections)
	}
}
