package app_test

import (
	"context"
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/xds"
)

// TestAttackEvictionSparesOtherAddresses: a node has connected and not yet
// finished its handshake when one address opens more bare TCP connections
// than the server keeps for peers without a node certificate. The flood
// evicts its own oldest connections, not the node's: the node's handshake
// then completes and it is served HTTP/2.
func TestAttackEvictionSparesOtherAddresses(t *testing.T) {
	const maxUnauth, flood = 8, 20
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		c.XDS.MaxConnections = 64
		c.XDS.MaxUnauthenticatedConnections = maxUnauth
		c.XDS.MaxUnauthenticatedPerAddress = 4
	}, app.WithXDSLimits(func(l *xds.Limits) { l.HandshakeTimeout = 10 * time.Second }))
	m.addIdentity("web")
	cert := m.joined("n1", "web")
	counter := func(event string) int {
		v, _ := sample(t, scrape(t, m), `meshca_xds_events_total{event="`+event+`"}`)
		return int(v)
	}
	evicted0 := counter("connections_evicted")

	raw, err := testkit.Dial(context.Background(), m.app.XDS, "127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	var floods []net.Conn
	for i := range flood {
		c, err := testkit.Dial(context.Background(), m.app.XDS, "127.0.0.5")
		if err != nil {
			t.Fatalf("flood connection %d: %v", i, err)
		}
		defer c.Close()
		floods = append(floods, c)
	}
	// Every flood connection was accepted after the node's, and each from
	// the maxUnauth-th on evicted one: wait until the server has closed
	// all but the last of those victims (well before the handshake
	// timeout), whichever they were.
	want := flood + 1 - maxUnauth
	closed := 0
	for _, c := range floods[:want-1] {
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil && !os.IsTimeout(err) {
			closed++
		}
	}
	evicted := counter("connections_evicted") - evicted0
	if evicted < want-1 {
		t.Fatalf("%d connections evicted after %d flood connections, want at least %d", evicted, flood, want-1)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cfg := m.serverTLS(cert)
	cfg.NextProtos = []string{"h2"}
	c := tls.Client(raw, cfg)
	herr := c.HandshakeContext(ctx)
	served := false
	if herr == nil {
		_ = c.SetDeadline(time.Now().Add(10 * time.Second))
		if _, err := c.Write([]byte(http2.ClientPreface)); err == nil {
			f, err := http2.NewFramer(c, c).ReadFrame()
			_, served = f.(*http2.SettingsFrame)
			if err != nil {
				herr = err
			}
		}
	}
	t.Logf("one address, %d bare TCP connections after a node's (limit %d without a certificate): %d evicted, %d of its oldest %d closed by the server; the node's handshake: err=%v, served HTTP/2 %t",
		flood, maxUnauth, evicted, closed, want-1, herr, served)
	if herr != nil || !served {
		t.Errorf("the node's connection was evicted by another address's flood: %v", herr)
	}
}
