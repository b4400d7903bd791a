package app_test

import (
	"crypto/tls"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/config"
)

// An out-of-range certificate lifetime is refused with the same words
// wherever it is given: the configuration file, the CLI, a bulk file and
// the admin API (which the registry answers for every TTL but a
// non-positive one), all from internal/authority's one check.
func TestTTLRefusedAlikeEverywhere(t *testing.T) {
	m := startMesh(t, nil)
	for _, ttl := range []time.Duration{0, time.Minute, 800 * time.Hour, -time.Hour} {
		want := authority.LeafTTL.Check(ttl).Error()
		t.Run(ttl.String(), func(t *testing.T) {
			cfg, err := config.Parse([]byte("ca:\n  default_leaf_ttl: " + ttl.String() + "\n"))
			if err != nil {
				t.Fatal(err)
			}
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "ca.default_leaf_ttl: "+want) {
				t.Errorf("config: %v, want ca.default_leaf_ttl: %q", err, want)
			}
			cfg.XDS.NodeCertTTL = config.Duration(ttl)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), "xds.node_cert_ttl: "+want) {
				t.Errorf("config: %v, want xds.node_cert_ttl: %q", err, want)
			}
			if _, stderr, err := m.cli("identity", "add", "cli", "--ttl", ttl.String()); err == nil || !strings.Contains(stderr, want) {
				t.Errorf("cli: err %v, stderr %q, want %q", err, stderr, want)
			}
			list := filepath.Join(t.TempDir(), "ids.txt")
			if err := os.WriteFile(list, []byte("bulk ttl="+ttl.String()+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
			if _, stderr, err := m.cli("identity", "add", "--from", list); err == nil || !strings.Contains(stderr, want) {
				t.Errorf("cli --from: err %v, stderr %q, want %q", err, stderr, want)
			}
			var e api.Error
			m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "api", TTL: ttl.String()}, &e, http.StatusBadRequest)
			if e.Code != api.CodeInvalid || !strings.Contains(e.Error, want) {
				t.Errorf("api: %+v, want %s %q", e, api.CodeInvalid, want)
			}
			t.Logf("ttl %s refused everywhere: %s", ttl, want)
		})
	}
	for _, name := range []string{"cli", "bulk", "api"} {
		if _, _, err := m.cli("identity", "show", name); err == nil {
			t.Errorf("identity %s was created with an out-of-range TTL", name)
		}
	}
}

// meshca's own server certificate lives authority.Default().Server from a
// backdated NotBefore, identities without a TTL live the configured
// default, and rotation.jitter 0 means no jitter: renewal at exactly the
// configured fraction.
func TestServerCertificateLifetime(t *testing.T) {
	clk := clock.NewFake(time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC))
	m := startMeshWith(t, clk, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		c.CA.DefaultLeafTTL = config.Duration(2 * time.Hour)
		c.Rotation.Fraction, c.Rotation.Jitter = 0.75, 0
	})
	life := authority.Default()
	conn, err := tls.Dial("tcp", m.app.XDS, &tls.Config{RootCAs: m.bundle(), ServerName: "localhost", NextProtos: []string{"h2"}, Time: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	leaf := conn.ConnectionState().PeerCertificates[0]
	conn.Close()
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != life.Server {
		t.Fatalf("server certificate lives %s, want %s", got, life.Server)
	}
	if got := clk.Now().Sub(leaf.NotBefore); got != life.Backdate {
		t.Fatalf("server certificate backdated %s, want %s", got, life.Backdate)
	}
	id := m.addIdentity("web")
	if got := id.Cert.NotAfter.Sub(id.Cert.NotBefore); got != 2*time.Hour {
		t.Fatalf("identity without a TTL lives %s, want the configured 2h", got)
	}
	if want := id.Cert.NotBefore.Add(90 * time.Minute); id.Cert.RenewAt == nil || !id.Cert.RenewAt.Equal(want) {
		t.Fatalf("renew_at %v, want %s: 0.75 of 2h without jitter", id.Cert.RenewAt, want)
	}
	t.Logf("server certificate %s..%s; identity %s..%s", leaf.NotBefore, leaf.NotAfter, id.Cert.NotBefore, id.Cert.NotAfter)
}
