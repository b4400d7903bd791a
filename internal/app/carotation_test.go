package app_test

import (
	"crypto/x509"
	"fmt"
	"net/http"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
)

// TestCARotationKeepsHandshakes rotates the root and then the intermediate
// under live streams and runs an mTLS handshake between two nodes' delivered
// secrets at every step: none may fail.
func TestCARotationKeepsHandshakes(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	for _, id := range []string{"echo", "web"} {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id, TTL: "1h"}, nil, http.StatusCreated)
	}
	server := &holder{p: subscribe(t, m, "server-node", m.joined("server-node", "echo"), secretName(""), secretName("echo")), secrets: map[string]*tlsv3.Secret{}}
	client := &holder{p: subscribe(t, m, "client-node", m.joined("client-node", "web"), secretName(""), secretName("web")), secrets: map[string]*tlsv3.Secret{}}
	for _, h := range []*holder{server, client} {
		for k, v := range h.p.next() {
			h.secrets[k] = v
		}
	}
	caState := func() api.CA {
		var c api.CA
		m.admin("GET", api.PathCA, nil, &c, http.StatusOK)
		return c
	}
	handshakes, phases := 0, map[string]time.Duration{}
	step := func() {
		t.Helper()
		// Move the clock while meshca's loops are parked, wait until they
		// are parked again, then until both nodes hold the current leaves
		// and a bundle of exactly the current roots.
		advance(t, clk, 5*time.Minute)
		now := clk.Now()
		var roots []string
		for _, r := range caState().Roots {
			roots = append(roots, r.Serial)
		}
		slices.Sort(roots)
		for _, n := range []struct {
			h  *holder
			id string
		}{{server, "echo"}, {client, "web"}} {
			// The leader re-keys a rotation's leaves from the change
			// feed, off the clock: read the current leaf again while
			// waiting.
			n.h.await(t, fmt.Sprintf("%s: node holds %s's current leaf and roots %v", now.Format(time.DateTime), n.id, roots), func() bool {
				return n.h.holds(t, n.id, m.serials()[n.id]) && slices.Equal(bundleSerials(t, n.h), roots)
			})
		}
		srv, okS := server.validAt(t, "echo", now)
		cli, okC := client.validAt(t, "web", now)
		if !okS || !okC {
			t.Fatalf("%s: a node holds no valid certificate", now.Format(time.DateTime))
		}
		at := func() time.Time { return now }
		if err := handshakeAt(t, at, srv, server.secrets[secretName("")], cli, client.secrets[secretName("")]); err != nil {
			t.Fatalf("%s (rotation %+v): handshake failed: %v", now.Format(time.DateTime), caState().Rotation, err)
		}
		handshakes++
	}

	for _, root := range []bool{true, false} {
		before := caState()
		var started api.CA
		m.admin("POST", api.PathCARotate, api.RotateCARequest{Root: root}, &started, http.StatusOK)
		if started.Rotation == nil {
			t.Fatal("no rotation reported after ca rotate")
		}
		if root && (started.Rotation.Phase != "publishing" || len(started.Roots) != 2) {
			t.Fatalf("root rotation started as %+v with %d roots", started.Rotation, len(started.Roots))
		}
		begin := clk.Now()
		phaseStart, phase := begin, started.Rotation.Phase
		for i := 0; ; i++ {
			if i > 400 {
				t.Fatalf("rotation did not finish: %+v", caState().Rotation)
			}
			step()
			cur := caState()
			p := "done"
			if cur.Rotation != nil {
				p = cur.Rotation.Phase
			}
			if p != phase {
				phases[kindName(root)+" "+phase] = clk.Now().Sub(phaseStart)
				phase, phaseStart = p, clk.Now()
			}
			if p == "done" {
				if cur.Issuer.Serial == before.Issuer.Serial {
					t.Fatal("issuer unchanged after rotation")
				}
				if root && (len(cur.Roots) != 1 || cur.Roots[0].Serial == before.Roots[0].Serial) {
					t.Fatalf("old root not retired: %+v", cur.Roots)
				}
				break
			}
		}
		// Both nodes now hold leaves from the new issuer.
		server.drain()
		client.drain()
		for _, h := range []*holder{server, client} {
			for name, s := range h.secrets {
				if name == secretName("") {
					continue
				}
				c := tlsCert(t, s)
				if len(c.Certificate) < 2 {
					t.Fatalf("%s has no intermediate in its chain", name)
				}
			}
		}
		t.Logf("%s rotation: %s of fake time", kindName(root), clk.Now().Sub(begin))
	}
	for p, d := range phases {
		t.Logf("phase %s lasted %s (fake time)", p, d)
	}
	t.Logf("%d handshakes across both rotations, none failed", handshakes)
	if handshakes < 100 {
		t.Fatalf("only %d handshakes", handshakes)
	}
}

// bundleSerials lists the serials of the roots in the bundle a node holds,
// sorted.
func bundleSerials(t *testing.T, h *holder) []string {
	t.Helper()
	var out []string
	for _, der := range testkit.ChainDER(string(h.secrets[secretName("")].GetValidationContext().GetTrustedCa().GetInlineBytes())) {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, fmt.Sprintf("%x", c.SerialNumber))
	}
	slices.Sort(out)
	return out
}

func kindName(root bool) string {
	if root {
		return "root"
	}
	return "intermediate"
}
