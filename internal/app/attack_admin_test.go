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
// the kernel's backlog, which costs meshca no descriptor), and the
// loopback admin API answers meanwhile.
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
	// Connections are accepted in order: once the server answers a
	// handshake on the next one, it has accepted every earlier one.
	raw, err := net.DialTimeout("tcp", m.app.AdminMTLS, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	_ = raw.SetDeadline(time.Now().Add(2 * time.Second))
	herr := tls.Client(raw, &tls.Config{InsecureSkipVerify: true}).Handshake()
	held := xdsDescriptors(t, portOf(t, m.app.AdminMTLS))
	start := time.Now()
	var ca api.CA
	m.admin("GET", api.PathCA, nil, &ca, http.StatusOK)
	t.Logf("%d idle TCP connections to the mTLS admin port: the server holds %d (limit %d); a handshake behind them: %v; loopback admin API answered in %s",
		flood, held, admin.MaxMTLSConnections, herr, time.Since(start).Round(time.Millisecond))
	if held > admin.MaxMTLSConnections {
		t.Errorf("the mTLS admin port holds %d connections, limit %d", held, admin.MaxMTLSConnections)
	}
}
