package app_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// TestLegacyNodeDirRenewsOnlyWithMeshca: a node directory written before
// meshca-issuers.pem existed pins meshca, when it renews, by what it has.
// Its bundle holds the organisation root, which a sibling CA shares: an
// impostor with a sibling-minted spiffe://<td>/meshca must not receive the
// renewal (its answer would replace the node's bundle and issuers, and so
// whom the node's Envoy trusts as meshca). The CAs that issued the node's
// own certificate are meshca's: the renewal pins those, and works against
// meshca, writing meshca-issuers.pem.
func TestLegacyNodeDirRenewsOnlyWithMeshca(t *testing.T) {
	m := startMeshIn(t, nil, filepath.Join(t.TempDir(), "data"), withAdminMTLS)
	root, meshcas, sibling := orgPKI(t)
	importOrgCA(m, meshcas, root)
	m.addIdentity("web")
	tok := m.addNode("old", "sidecar", "web")
	dir := filepath.Join(t.TempDir(), "old")
	run := func(args ...string) (string, error) {
		var stdout, stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		err := cli.Execute(ctx, cli.Config{Stdout: &stdout, Stderr: &stderr}, args)
		return stdout.String() + stderr.String(), err
	}
	if out, err := run("bootstrap", "--server", m.app.XDS, "--node", "old", "--token", tok.Token, "--ca-sha256", tok.CASHA256, "--out", dir); err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	// As written before meshca-issuers.pem.
	if err := os.Remove(filepath.Join(dir, bootstrap.IssuersFile)); err != nil {
		t.Fatal(err)
	}
	setServer := func(addr string) {
		path := filepath.Join(dir, cli.NodeFile)
		raw, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		var nf nodeapi.NodeFile
		if err := json.Unmarshal(raw, &nf); err != nil {
			t.Fatal(err)
		}
		nf.Server = addr
		raw, _ = json.Marshal(nf)
		if err := os.WriteFile(path, raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}

	key := testkit.Key(t)
	leaf := sibling.mint(t, "spiffe://mesh.local/meshca", big.NewInt(9), key.Public(), x509.ExtKeyUsageServerAuth)
	ln, calls := impostor(t, testkit.Pair(leaf, key, sibling.Cert, root.Cert))

	setServer(ln.Addr().String())
	out, err := run("bootstrap", "renew", "--dir", dir)
	reached := ""
	select {
	case reached = <-calls:
	default:
	}
	t.Logf("legacy node directory renewing against a sibling-CA impostor: err=%v; call reached the impostor: %q", err, reached)
	if err == nil || reached != "" {
		t.Fatalf("the renewal reached the impostor (%q): %v\n%s", reached, err, out)
	}

	setServer(m.app.XDS)
	if out, err := run("bootstrap", "renew", "--dir", dir); err != nil {
		t.Fatalf("renewal of the legacy directory against meshca: %v\n%s", err, out)
	}
	if _, err := os.Stat(filepath.Join(dir, bootstrap.IssuersFile)); err != nil {
		t.Errorf("the renewal did not write %s: %v", bootstrap.IssuersFile, err)
	}
}

// impostor serves gRPC over TLS with cert on a free loopback port until
// the test ends, answering every call Unavailable; calls receives the
// method of each call that reached it.
func impostor(t *testing.T, cert *tls.Certificate) (net.Listener, <-chan string) {
	t.Helper()
	calls := make(chan string, 16)
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*cert}})),
		grpc.UnknownServiceHandler(func(_ any, ss grpc.ServerStream) error {
			method, _ := grpc.MethodFromServerStream(ss)
			select {
			case calls <- method:
			default:
			}
			return status.Error(codes.Unavailable, "impostor")
		}))
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(srv.Stop)
	return ln, calls
}
