package app_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

// copyKEK gives the data directory to the key-encryption key of from, as
// an operator provisions a second replica.
func copyKEK(t *testing.T, from, to string) {
	t.Helper()
	kek, err := os.ReadFile(filepath.Join(from, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(to, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(to, "kek"), kek, 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestTwoReplicasOnEtcd runs two meshca replicas on one etcd with the same
// kek, each with its own admin and xDS ports: what is added through A is
// visible through B, and a node connected to B receives over its SDS
// stream the certificate and the CRL that changes made through A produced.
// Both replicas run every loop (renewal, CRL, CA rotation).
func TestTwoReplicasOnEtcd(t *testing.T) {
	e := testkit.StartEtcd(t)
	onEtcd := func(c *config.Config) {
		c.Store.Etcd = config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/replicas"}
	}
	dirA, dirB := filepath.Join(t.TempDir(), "a"), filepath.Join(t.TempDir(), "b")
	a := startMeshIn(t, nil, dirA, onEtcd)
	copyKEK(t, dirA, dirB)
	b := startMeshIn(t, nil, dirB, onEtcd)
	if a.app.Admin == b.app.Admin || a.app.XDS == b.app.XDS {
		t.Fatalf("replicas share ports: %s %s / %s %s", a.app.Admin, a.app.XDS, b.app.Admin, b.app.XDS)
	}

	web := a.addIdentity("web")
	a.addIdentity("echo")
	var seen api.Identity
	b.admin("GET", api.PathIdentities+"/web", nil, &seen, http.StatusOK)
	if seen.Cert == nil || seen.Cert.Serial != web.Cert.Serial {
		t.Fatalf("web through B: %+v, want serial %s", seen, web.Cert.Serial)
	}

	// The node is added through A and joins and streams through B.
	tok := a.addNode("n1", "sidecar", "echo")
	cert, err := b.join("n1", tok.Token)
	if err != nil {
		t.Fatalf("join through B: %v", err)
	}
	node := subscribe(t, b, "n1", cert, secretName(""), secretName("echo"))
	if got := node.next(); got[secretName("echo")] == nil {
		t.Fatalf("first push from B lacks echo: %v", names(got))
	}

	// A certificate change through A reaches the node on B.
	start := time.Now()
	var reissued api.Identity
	a.admin("POST", api.PathReissue+"/echo", struct{}{}, &reissued, http.StatusOK)
	for {
		s := node.next()[secretName("echo")]
		if s != nil && serialOf(t, s) == reissued.Cert.Serial {
			break
		}
	}
	certTook := time.Since(start)

	// A revocation through A reaches the node on B in its CRL.
	start = time.Now()
	var res api.Revoked
	a.admin("POST", api.PathRevoke+"/web", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	for {
		bundle := node.next()[secretName("")]
		if bundle == nil {
			continue
		}
		var revoked []string
		for _, crl := range testkit.ParseCRLs(t, bundle.GetValidationContext().GetCrl().GetInlineBytes()) {
			for _, r := range crl.RevokedCertificateEntries {
				revoked = append(revoked, fmt.Sprintf("%x", r.SerialNumber))
			}
		}
		if slices.Contains(revoked, web.Cert.Serial) {
			break
		}
	}
	crlTook := time.Since(start)
	t.Logf("change through replica A -> node on replica B: reissued certificate %s, revocation in the CRL %s", certTook.Round(time.Millisecond), crlTook.Round(time.Millisecond))
	for what, took := range map[string]time.Duration{"certificate": certTook, "CRL": crlTook} {
		if took > 5*time.Second {
			t.Fatalf("%s took %s to cross replicas", what, took)
		}
	}
}

// TestReplicaWithAnotherKEKRefused starts a second replica on the same
// etcd prefix from a fresh data directory, without the first replica's
// kek: it must refuse to start and say what to copy where.
func TestReplicaWithAnotherKEKRefused(t *testing.T) {
	e := testkit.StartEtcd(t)
	onEtcd := func(c *config.Config) {
		c.Store.Etcd = config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: "/kek"}
	}
	startMeshIn(t, nil, filepath.Join(t.TempDir(), "a"), onEtcd)
	dirB := filepath.Join(t.TempDir(), "b")
	cfg := testkit.LoopbackConfig(dirB)
	onEtcd(&cfg)
	a, err := app.Start(context.Background(), cfg, testkit.Logger(t))
	if err == nil {
		a.Wait(canceled())
		t.Fatal("a replica with another kek started")
	}
	t.Logf("refused: %v", err)
	for _, want := range []string{"key-encryption key does not match", "kek file of the replicas that initialised it", "copy it over " + filepath.Join(dirB, "kek")} {
		if !strings.Contains(err.Error(), want) {
			t.Fatalf("error %q does not say %q", err, want)
		}
	}
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}
