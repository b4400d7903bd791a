package app_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"

	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

// TestCrowdOfNodesIsNotEvicted: many nodes, each at its own address,
// connect at once, as the nodes of a failed replica do, with far more
// connections than the server keeps for peers without a node certificate
// (handshakes in progress count). Every one is served and none is evicted:
// the later ones wait to be accepted until a handshake finishes, instead of
// closing the oldest handshake, which each node would only retry.
func TestCrowdOfNodesIsNotEvicted(t *testing.T) {
	const maxUnauth, nodes = 4, 24
	m := startMeshWith(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		c.XDS.MaxConnections = 64
		c.XDS.MaxUnauthenticatedConnections = maxUnauth
		c.XDS.MaxUnauthenticatedPerAddress = maxUnauth
	})
	m.addIdentity("web")
	certs := make([]*tls.Certificate, nodes)
	for i := range certs {
		certs[i] = m.joined(fmt.Sprintf("crowd-%d", i), "web")
	}
	counter := func(event string) int {
		v, _ := sample(t, scrape(t, m), `meshca_xds_events_total{event="`+event+`"}`)
		return int(v)
	}
	evicted0 := counter("connections_evicted")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Every TCP connection first (the server takes maxUnauth of them, the
	// rest are in its listen backlog), then every handshake at once.
	raws := make([]net.Conn, nodes)
	for i := range raws {
		c, err := testkit.Dial(ctx, m.app.XDS, fmt.Sprintf("127.1.0.%d", i+1))
		if err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		defer c.Close()
		raws[i] = c
	}
	start := time.Now()
	errs := make([]error, nodes)
	var wg sync.WaitGroup
	for i, raw := range raws {
		wg.Add(1)
		go func() {
			defer wg.Done()
			cfg := m.serverTLS(certs[i])
			cfg.NextProtos = []string{"h2"}
			c := tls.Client(raw, cfg)
			_ = c.SetDeadline(time.Now().Add(20 * time.Second))
			if err := c.HandshakeContext(ctx); err != nil {
				errs[i] = err
				return
			}
			if _, err := c.Write([]byte(http2.ClientPreface)); err != nil {
				errs[i] = err
				return
			}
			f, err := http2.NewFramer(c, c).ReadFrame()
			if _, ok := f.(*http2.SettingsFrame); !ok && err == nil {
				err = fmt.Errorf("first frame %T, want SETTINGS", f)
			}
			errs[i] = err
		}()
	}
	wg.Wait()
	took := time.Since(start)
	served := 0
	for i, err := range errs {
		if err != nil {
			t.Errorf("node %d was not served: %v", i, err)
		} else {
			served++
		}
	}
	evicted := counter("connections_evicted") - evicted0
	t.Logf("%d nodes at %d addresses connecting at once, %d slots for handshakes: %d served in %s, %d evicted",
		nodes, nodes, maxUnauth, served, took.Round(time.Millisecond), evicted)
	if evicted != 0 {
		t.Errorf("%d handshakes of the crowd were evicted, want none", evicted)
	}
}
