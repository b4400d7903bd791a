package main_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
)

// TestKilledReplicaNodesFailOver: two meshca processes on one etcd; a node
// bootstrapped at A is connected to A; A is killed (SIGKILL); the node,
// going round the endpoints of its envoy.yaml, is served by B with the
// current state, and receives the next CRL made through B.
func TestKilledReplicaNodesFailOver(t *testing.T) {
	e := testkit.StartEtcd(t)
	cfg := filepath.Join(t.TempDir(), "meshca.yaml")
	if err := os.WriteFile(cfg, fmt.Appendf(nil, "store:\n  etcd:\n    endpoints: [%s]\n    prefix: /meshca-kill\n", e.Endpoint), 0o600); err != nil {
		t.Fatal(err)
	}
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	a := startServer(t, dirA, "--config", cfg)
	kek, err := os.ReadFile(filepath.Join(dirA, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dirB, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirB, "kek"), kek, 0o600); err != nil {
		t.Fatal(err)
	}
	b := startServer(t, dirB, "--config", cfg)
	// Both registered (each logs it once its key is in etcd), as A sees them.
	for _, s := range []*server{a, b} {
		select {
		case <-s.logged("replica registered"):
		case <-time.After(10 * time.Second):
			t.Fatalf("replica at %s not registered within 10s\n%s", s.xds, s.logs())
		}
	}
	var rs []api.Replica
	resp, err := http.Get("http://" + a.admin + api.PathReplicas)
	if err == nil {
		err = json.NewDecoder(resp.Body).Decode(&rs)
		resp.Body.Close()
	}
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range rs {
		got = append(got, r.XDS)
	}
	if !slices.Contains(got, a.xds) || !slices.Contains(got, b.xds) {
		t.Fatalf("replicas listed by A: %v, want %s and %s", got, a.xds, b.xds)
	}

	mustRun(t, a.admin, "identity", "add", "web")
	var other api.Identity
	if err := json.Unmarshal([]byte(mustRun(t, a.admin, "identity", "add", "other", "-o", "json")), &other); err != nil {
		t.Fatal(err)
	}
	var tok api.JoinToken
	if err := json.Unmarshal([]byte(mustRun(t, a.admin, "node", "add", "edge-1", "--identity", "web", "-o", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "edge-1")
	mustRun(t, "", "bootstrap", "--server", a.xds, "--node", "edge-1", "--token", tok.Token, "--ca-sha256", tok.CASHA256, "--out", dir)

	bundle, web := "spiffe://mesh.local", "spiffe://mesh.local/web"
	node := testkit.NewXDSNode(t, dir, "edge-1", "mesh.local", bundle, web)
	if want := []string{a.xds, b.xds}; !slices.Equal(node.Servers, want) {
		t.Fatalf("envoy.yaml lists %v, want %v", node.Servers, want)
	}
	node.Start()
	if first := node.Until("first answer", 10*time.Second, func(u testkit.XDSUpdate) bool { return u.Secrets[web] != nil }); first.Server != a.xds {
		t.Fatalf("node connected first to %s, want A %s", first.Server, a.xds)
	}

	killed := time.Now()
	if err := a.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	<-a.done
	onB := node.Until("served by B", 10*time.Second, func(u testkit.XDSUpdate) bool { return u.Server == b.xds })
	var lost time.Time
	select {
	case lost = <-node.Ended:
	default:
		t.Fatal("the node is on B but its stream to A never ended")
	}
	var ids []api.Identity
	if err := json.Unmarshal([]byte(mustRun(t, b.admin, "identity", "list", "-o", "json")), &ids); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if id.Name == "web" && (id.Cert == nil || serial(t, onB.Secrets[web]) != id.Cert.Serial) {
			t.Fatalf("B served web's certificate %s, current is %+v", serial(t, onB.Secrets[web]), id.Cert)
		}
	}
	t.Logf("replica A killed -> stream ended at the node: %s; -> node connected to B and current: %s (kill to current: %s)",
		lost.Sub(killed), onB.At.Sub(lost), onB.At.Sub(killed))
	if took := onB.At.Sub(killed); took > 2*time.Second {
		t.Errorf("kill to current on B took %s, want under 2s", took)
	}

	start := time.Now()
	mustRun(t, b.admin, "identity", "revoke", "other")
	node.Until("CRL with other's serial", 10*time.Second, func(u testkit.XDSUpdate) bool {
		s := u.Secrets[bundle]
		if u.Server != b.xds || s == nil {
			return false
		}
		for _, crl := range testkit.ParseCRLs(t, s.GetValidationContext().GetCrl().GetInlineBytes()) {
			for _, e := range crl.RevokedCertificateEntries {
				if fmt.Sprintf("%x", e.SerialNumber) == other.Cert.Serial {
					return true
				}
			}
		}
		return false
	})
	t.Logf("revocation on B -> CRL at the node: %s", time.Since(start))
	if !strings.Contains(b.logs(), "replica registered") {
		t.Errorf("B did not log its registration:\n%s", b.logs())
	}
}

// serial is the hex serial of the leaf in a TLS secret.
func serial(t *testing.T, s *tlsv3.Secret) string {
	t.Helper()
	c := testkit.ParseCertPEM(t, s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	return fmt.Sprintf("%x", c.SerialNumber)
}
