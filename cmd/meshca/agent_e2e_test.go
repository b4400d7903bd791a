package main_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	bootstrapfiles "github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/mesh"
)

// agentProc is a running `meshca agent` child process.
type agentProc struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan error
}

type lockedWriter struct{ p *agentProc }

func (w lockedWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.out.Write(b)
}

func (p *agentProc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startAgentProc(t *testing.T, args ...string) *agentProc {
	t.Helper()
	p := &agentProc{done: make(chan error, 1)}
	p.cmd = exec.Command(binary, append([]string{"agent"}, args...)...)
	p.cmd.Stdout, p.cmd.Stderr = lockedWriter{p}, lockedWriter{p}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if p.cmd.ProcessState == nil {
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// stop sends SIGTERM and waits for a clean exit.
func (p *agentProc) stop(t *testing.T) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-p.done:
		if err != nil {
			t.Fatalf("agent exit after SIGTERM: %v\n%s", err, p.output())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("agent did not stop within 15s of SIGTERM\n%s", p.output())
	}
}

// agentSecrets opens a state-of-the-world SDS stream on socket, waiting
// for the agent to listen, and returns the first answer holding every
// name. A stream the agent refuses because it does not hold a name yet
// (PermissionDenied) or has not heard from meshca yet (Unavailable), as
// Envoy sees at start, is opened again, every 100 ms for up to 30 s.
func agentSecrets(t *testing.T, socket string, names ...string) map[string]*tlsv3.Secret {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		got, err := sotwUntil(ctx, conn, names)
		if err == nil {
			return got
		}
		if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unavailable {
			t.Fatalf("SDS on %s: %v", socket, err)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("SDS on %s: %v", socket, err)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func sotwUntil(ctx context.Context, conn *grpc.ClientConn, names []string) (map[string]*tlsv3.Secret, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx, grpc.WaitForReady(true))
	if err != nil {
		return nil, err
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resource.SecretType, ResourceNames: names}
	for {
		if err := stream.Send(req); err != nil {
			return nil, err
		}
		resp, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		got := map[string]*tlsv3.Secret{}
		for _, r := range resp.GetResources() {
			s := new(tlsv3.Secret)
			if err := r.UnmarshalTo(s); err != nil {
				return nil, err
			}
			got[s.GetName()] = s
		}
		if len(got) == len(names) {
			return got, nil
		}
		req.VersionInfo, req.ResponseNonce = resp.GetVersionInfo(), resp.GetNonce()
	}
}

// TestAgentCommand runs `meshca agent` against `meshca server`: the first
// start joins with the token and writes an envoy.yaml that takes secrets
// from the agent's socket; the socket serves the node's certificate for a
// key made by the agent; the files for gRPC hold the same; a restart reuses
// the node credentials and makes a new key; a renewal of the node
// certificate beside it does not stop it; meshca's data directory never
// holds the agent's key.
func TestAgentCommand(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, dataDir)
	mustRun(t, srv.admin, "identity", "add", "web")
	var tok api.JoinToken
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "node", "add", "agent-1", "--identity", "web", "--kind", "sidecar", "--agent", "-o", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	tokenFile := filepath.Join(dir, "token")
	if err := os.WriteFile(tokenFile, []byte(tok.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	node, socket, files := filepath.Join(dir, "node"), filepath.Join(dir, "run", "sds.sock"), filepath.Join(dir, "grpc")
	wlSocket := filepath.Join(dir, "wl", "workload.sock")
	args := []string{"--server", srv.xds, "--node", "agent-1", "--data-dir", node, "--sds-socket", socket, "--write-files", files, "--workload-socket", wlSocket}
	p := startAgentProc(t, append(args, "--token-file", tokenFile, "--ca-sha256", tok.CASHA256)...)

	webName, bundleName := "spiffe://mesh.local/web", "spiffe://mesh.local"
	first := agentSecrets(t, socket, webName, bundleName)
	leaf, key := secretPair(t, first[webName])
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != webName {
		t.Fatalf("certificate names %v", leaf.URIs)
	}
	// The Workload API on the second socket serves the same certificate.
	wctx, wcancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer wcancel()
	svids, err := workloadapi.FetchX509SVIDs(wctx, workloadapi.WithAddr("unix://"+wlSocket))
	if err != nil {
		t.Fatalf("Workload API: %v", err)
	}
	if len(svids) != 1 || svids[0].ID.String() != webName || !bytes.Equal(svids[0].Certificates[0].Raw, leaf.Raw) {
		t.Fatalf("Workload API serves %d SVIDs, not web's certificate served over SDS", len(svids))
	}
	if !strings.Contains(p.output(), "node agent-1 joined") {
		t.Fatalf("the first start did not join:\n%s", p.output())
	}
	if strings.Contains(p.output(), "PRIVATE KEY") {
		t.Fatal("the agent printed key material")
	}

	// envoy.yaml takes the secrets from the socket.
	y, err := os.ReadFile(filepath.Join(node, bootstrapfiles.EnvoyFile))
	if err != nil {
		t.Fatal(err)
	}
	b, err := envoycheck.ParseEnvoy(y)
	if err != nil {
		t.Fatalf("envoy.yaml does not validate: %v", err)
	}
	var pipe string
	for _, c := range b.GetStaticResources().GetClusters() {
		if c.GetName() == mesh.AgentSDSCluster {
			pipe = c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath()
		}
	}
	if pipe != socket {
		t.Fatalf("envoy.yaml's %s points at %q, want %q", mesh.AgentSDSCluster, pipe, socket)
	}

	// The files for gRPC: the same certificate and key.
	certPEM, err := os.ReadFile(filepath.Join(files, "web", "cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if blk, _ := pem.Decode(certPEM); blk == nil || !bytes.Equal(blk.Bytes, leaf.Raw) {
		t.Fatal("cert.pem is not the certificate served over SDS")
	}
	keyPEM, err := os.ReadFile(filepath.Join(files, "web", "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if fi, _ := os.Stat(filepath.Join(files, "web", "key.pem")); fi.Mode().Perm() != 0o600 {
		t.Fatalf("key.pem mode %s", fi.Mode().Perm())
	}
	if !bytes.Equal(keyPEM, first[webName].GetTlsCertificate().GetPrivateKey().GetInlineBytes()) {
		t.Fatal("key.pem is not the key served over SDS")
	}

	// A restart reuses the node credentials (no token) and makes a new key;
	// the socket is removed on exit.
	p.stop(t)
	if _, err := os.Lstat(socket); !os.IsNotExist(err) {
		t.Fatalf("socket left behind after exit: %v", err)
	}
	p2 := startAgentProc(t, append(args, "--identity-poll", "500ms")...)
	second := agentSecrets(t, socket, webName, bundleName)
	leaf2, _ := secretPair(t, second[webName])
	if leaf2.PublicKey.(*ecdsa.PublicKey).Equal(leaf.PublicKey) {
		t.Fatal("a restarted agent serves the key of the previous run")
	}
	if !strings.Contains(p2.output(), "using the node credentials") {
		t.Fatalf("the restart did not reuse the node credentials:\n%s", p2.output())
	}

	// The node certificate renewed beside the running agent (meshca then
	// revokes the previous one and closes the connections made with it):
	// the agent goes on with the new one and takes up a new identity.
	mustRun(t, "", "bootstrap", "renew", "--dir", node)
	mustRun(t, srv.admin, "identity", "add", "api")
	mustRun(t, srv.admin, "node", "assign", "agent-1", "--identity", "api")
	apiName := "spiffe://mesh.local/api"
	third := agentSecrets(t, socket, webName, apiName, bundleName)
	if leaf3, _ := secretPair(t, third[apiName]); leaf3.URIs[0].String() != apiName {
		t.Fatalf("api's certificate names %v", leaf3.URIs)
	}
	p2.stop(t)

	// meshca's data never held the agent's key.
	scanned := 0
	err = filepath.Walk(dataDir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		scanned += len(data)
		if bytes.Contains(data, key.D.Bytes()) {
			t.Errorf("%s holds the agent's key", path)
		}
		return nil
	})
	if err != nil || scanned == 0 {
		t.Fatalf("scan of the data directory: %v (%d bytes)", err, scanned)
	}
}

// secretPair parses a TLS secret's leaf and key and checks they match.
func secretPair(t *testing.T, s *tlsv3.Secret) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	if s == nil {
		t.Fatal("secret missing")
	}
	cb, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	kb, _ := pem.Decode(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes())
	if cb == nil || kb == nil {
		t.Fatalf("secret %s lacks a certificate or key", s.GetName())
	}
	leaf, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS8PrivateKey(kb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	key := k.(*ecdsa.PrivateKey)
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Fatalf("secret %s: key and certificate do not match", s.GetName())
	}
	return leaf, key
}
