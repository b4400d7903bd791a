package main_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/internal/testkit"
)

var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "meshca-e2e")
	if err != nil {
		panic(err)
	}
	binary, err = testkit.BuildMeshca(dir)
	if err != nil {
		os.RemoveAll(dir)
		panic(err)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// server is a running `meshca server` child process.
type server struct {
	cmd       *exec.Cmd
	admin     string
	adminMTLS string
	xds       string
	mu        sync.Mutex
	stderr    bytes.Buffer
	seen      map[string]chan struct{} // log message -> closed once logged (see logged)
	done      chan error
}

// logged returns a channel closed once the server has logged a record
// with message msg (at any time since it started).
func (s *server) logged(msg string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.seen[msg]
	if !ok {
		ch = make(chan struct{})
		s.seen[msg] = ch
	}
	return ch
}

// sawLog records that msg was logged, waking its waiters.
func (s *server) sawLog(msg string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch, ok := s.seen[msg]
	if !ok {
		ch = make(chan struct{})
		s.seen[msg] = ch
	}
	select {
	case <-ch:
	default:
		close(ch)
	}
}

func (s *server) logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

func startServer(t *testing.T, dataDir string, extra ...string) *server {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	s := &server{done: make(chan error, 1), seen: map[string]chan struct{}{}}
	args := append([]string{"server", "--data-dir", dataDir, "--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0", "--log-format", "json"}, extra...)
	s.cmd = exec.CommandContext(ctx, binary, args...)
	pipe, err := s.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	addr := make(chan [3]string, 1)
	go func() {
		sc := bufio.NewScanner(pipe)
		for sc.Scan() {
			line := sc.Text()
			s.mu.Lock()
			s.stderr.WriteString(line + "\n")
			s.mu.Unlock()
			var rec struct {
				Msg       string `json:"msg"`
				Admin     string `json:"admin"`
				AdminMTLS string `json:"admin_mtls"`
				XDS       string `json:"xds"`
			}
			if json.Unmarshal([]byte(line), &rec) != nil {
				continue
			}
			s.sawLog(rec.Msg)
			if rec.Msg == "meshca started" {
				addr <- [3]string{rec.Admin, rec.AdminMTLS, rec.XDS}
			}
		}
		s.done <- s.cmd.Wait()
	}()
	select {
	case a := <-addr:
		s.admin, s.adminMTLS, s.xds = a[0], a[1], a[2]
	case err := <-s.done:
		t.Fatalf("server exited before it started: %v\n%s", err, s.logs())
	case <-time.After(60 * time.Second):
		t.Fatalf("server did not start within 60s\n%s", s.logs())
	}
	t.Cleanup(func() {
		if s.cmd.ProcessState == nil {
			_ = s.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

// stop sends SIGTERM and waits for a clean exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-s.done:
		if err != nil {
			t.Fatalf("server exit after SIGTERM: %v\n%s", err, s.logs())
		}
	case <-time.After(15 * time.Second):
		t.Fatalf("server did not stop within 15s of SIGTERM\n%s", s.logs())
	}
	if !strings.Contains(s.logs(), "meshca stopped") {
		t.Fatalf("no clean-stop log line:\n%s", s.logs())
	}
}

type result struct {
	stdout, stderr string
	code           int
}

// meshca runs the CLI and scans its output for key material.
func meshca(t *testing.T, admin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if admin != "" {
		args = append([]string{"--admin", admin}, args...)
	}
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), "MESHCA_ADMIN=")
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		r.code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("meshca %v: %v", args, err)
	}
	if strings.Contains(r.stdout+r.stderr, "PRIVATE KEY") {
		t.Fatalf("meshca %v printed key material", args)
	}
	return r
}

func mustRun(t *testing.T, admin string, args ...string) string {
	t.Helper()
	r := meshca(t, admin, args...)
	if r.code != 0 {
		t.Fatalf("meshca %v: exit %d\nstderr: %s", args, r.code, r.stderr)
	}
	return r.stdout
}

func TestEndToEnd(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, dataDir)

	mustRun(t, srv.admin, "identity", "add", "echo", "--dns", "echo.mesh.local", "--ttl", "30m")
	mustRun(t, srv.admin, "identity", "add", "front/web")

	var ids []api.Identity
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "identity", "list", "-o", "json")), &ids); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0].Name != "echo" || ids[1].Name != "front/web" {
		t.Fatalf("identity list = %+v", ids)
	}
	serials := map[string]string{}
	for _, id := range ids {
		if id.Cert == nil || id.Cert.Serial == "" || id.Cert.State != "valid" {
			t.Fatalf("identity %s has no valid certificate: %+v", id.Name, id.Cert)
		}
		serials[id.Name] = id.Cert.Serial
	}
	if got := ids[0].Cert.NotAfter.Sub(ids[0].Cert.NotBefore); got != 30*time.Minute {
		t.Fatalf("echo validity = %s, want 30m", got)
	}

	// The chain from `cert show` verifies against `ca bundle` with openssl.
	chain := mustRun(t, srv.admin, "cert", "show", "echo")
	bundle := mustRun(t, srv.admin, "ca", "bundle")
	dir := t.TempDir()
	leafFile, chainFile, bundleFile := filepath.Join(dir, "leaf.pem"), filepath.Join(dir, "chain.pem"), filepath.Join(dir, "bundle.pem")
	leafPEM, restPEM := splitFirstPEM(t, []byte(chain))
	writeFile(t, leafFile, leafPEM)
	writeFile(t, chainFile, restPEM)
	writeFile(t, bundleFile, []byte(bundle))
	out, err := exec.Command("openssl", "verify", "-CAfile", bundleFile, "-untrusted", chainFile, leafFile).CombinedOutput()
	if err != nil || !strings.Contains(string(out), ": OK") {
		t.Fatalf("openssl verify: %v\n%s", err, out)
	}
	leaf := testkit.ParseCertPEM(t, leafPEM)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://mesh.local/echo" || len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "echo.mesh.local" {
		t.Fatalf("leaf SANs: uris=%v dns=%v", leaf.URIs, leaf.DNSNames)
	}

	show := mustRun(t, srv.admin, "identity", "show", "echo")
	for _, want := range []string{"spiffe://mesh.local/echo", serials["echo"], "valid"} {
		if !strings.Contains(show, want) {
			t.Fatalf("identity show lacks %q:\n%s", want, show)
		}
	}
	status := mustRun(t, srv.admin, "status")
	for _, want := range []string{"CA", "mesh.local", "identities  2 active, 0 revoked", "next to expire: echo", "nodes       0 registered", "identity.add"} {
		if !strings.Contains(status, want) {
			t.Fatalf("status lacks %q:\n%s", want, status)
		}
	}
	caShow := mustRun(t, srv.admin, "ca", "show")
	if !strings.Contains(caShow, "issuer:") || !strings.Contains(caShow, "root:") {
		t.Fatalf("ca show:\n%s", caShow)
	}

	// Refusals: non-zero exit, a readable message, nothing issued.
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"duplicate", []string{"identity", "add", "echo"}, "already exists"},
		{"bad name", []string{"identity", "add", "../admin"}, "invalid identity name"},
		{"bad dns", []string{"identity", "add", "x", "--dns", "not a host!"}, "invalid DNS name"},
		{"ttl too short", []string{"identity", "add", "x", "--ttl", "1m"}, "5m0s"},
		{"ttl too long", []string{"identity", "add", "x", "--ttl", "800h"}, "720h0m0s"},
		{"unknown identity", []string{"identity", "show", "nobody"}, "not found"},
		{"missing arg", []string{"identity", "add"}, "needs NAME"},
		{"bad output", []string{"identity", "list", "-o", "xml"}, "use text or json"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := meshca(t, srv.admin, tc.args...)
			if r.code == 0 || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("exit %d, stderr %q; want non-zero and %q", r.code, r.stderr, tc.want)
			}
		})
	}

	// A second server on the same data directory exits at once, naming it.
	second := exec.Command(binary, "server", "--data-dir", dataDir, "--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0")
	start := time.Now()
	out, err = second.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "in use by another meshca") || !strings.Contains(string(out), dataDir) {
		t.Fatalf("second server: err=%v\n%s", err, out)
	}
	if took := time.Since(start); took > 10*time.Second {
		t.Fatalf("second server took %s to give up", took)
	}

	var before []api.AuditEvent
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "audit", "list", "-o", "json")), &before); err != nil {
		t.Fatal(err)
	}
	srv.stop(t)

	// After a restart the same certificates (same serials) are there.
	srv = startServer(t, dataDir)
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "identity", "list", "-o", "json")), &ids); err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 {
		t.Fatalf("after restart: %d identities", len(ids))
	}
	for _, id := range ids {
		if id.Cert == nil || id.Cert.Serial != serials[id.Name] {
			t.Fatalf("after restart %s: cert %+v, want serial %s", id.Name, id.Cert, serials[id.Name])
		}
	}
	if again := mustRun(t, srv.admin, "cert", "show", "echo"); again != chain {
		t.Fatal("cert show after restart differs")
	}
	if again := mustRun(t, srv.admin, "ca", "bundle"); again != bundle {
		t.Fatal("trust bundle changed across a restart")
	}

	var evs []api.AuditEvent
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "audit", "list", "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	if len(evs) != len(before) {
		t.Fatalf("audit records: %d before restart, %d after", len(before), len(evs))
	}
	actions := map[string]int{}
	for i, e := range evs {
		if e.Seq != uint64(i+1) {
			t.Fatalf("audit seq %d at position %d: not gapless", e.Seq, i)
		}
		actions[e.Action+"/"+e.Outcome]++
	}
	if actions["ca.init/ok"] != 1 || actions["identity.add/ok"] != 2 || actions["cert.issue/ok"] != 2 || actions["identity.add/denied"] < 5 {
		t.Fatalf("audit actions = %v", actions)
	}
	srv.stop(t)

	if strings.Contains(srv.logs(), "PRIVATE KEY") {
		t.Fatal("server log contains key material")
	}
	for _, f := range []string{"meshca.db", "kek"} {
		fi, err := os.Stat(filepath.Join(dataDir, f))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s mode %04o, want 0600", f, fi.Mode().Perm())
		}
	}
	if fi, err := os.Stat(dataDir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir mode: %v %v", fi.Mode().Perm(), err)
	}
}

func TestUnreachableServerNamesAddress(t *testing.T) {
	r := meshca(t, "127.0.0.1:1", "identity", "list")
	if r.code == 0 || !strings.Contains(r.stderr, "http://127.0.0.1:1") || !strings.Contains(r.stderr, "meshca server") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestServerRejectsBadConfig(t *testing.T) {
	cfg := filepath.Join(t.TempDir(), "meshca.yaml")
	writeFile(t, cfg, []byte("ca:\n  root_tll: 1h\n"))
	r := meshca(t, "", "server", "--config", cfg, "--data-dir", t.TempDir())
	if r.code == 0 || !strings.Contains(r.stderr, `unknown key "ca.root_tll"`) {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	r = meshca(t, "", "server", "--log-format", "xml", "--data-dir", t.TempDir())
	if r.code == 0 || !strings.Contains(r.stderr, "log.format") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestServerRefusesStoreWithoutKEK(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, dataDir)
	srv.stop(t)
	if err := os.Remove(filepath.Join(dataDir, "kek")); err != nil {
		t.Fatal(err)
	}
	r := meshca(t, "", "server", "--data-dir", dataDir, "--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, "restore it from backup") {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(dataDir, "kek")); err == nil {
		t.Fatal("a new key-encryption key was created over an existing store")
	}
}

func TestServerRefusesLooseKEK(t *testing.T) {
	dataDir := filepath.Join(t.TempDir(), "data")
	srv := startServer(t, dataDir)
	srv.stop(t)
	kek := filepath.Join(dataDir, "kek")
	if err := os.Chmod(kek, 0o644); err != nil {
		t.Fatal(err)
	}
	r := meshca(t, "", "server", "--data-dir", dataDir, "--admin-listen", "127.0.0.1:0", "--xds-listen", "127.0.0.1:0")
	if r.code == 0 || !strings.Contains(r.stderr, "chmod 600 "+kek) {
		t.Fatalf("exit %d, stderr %q", r.code, r.stderr)
	}
}

func TestNodeBootstrap(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	mustRun(t, srv.admin, "identity", "add", "web", "--dns", "web.mesh.local")
	var tok api.JoinToken
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "node", "add", "edge-1", "--identity", "web", "--kind", "front-proxy", "-o", "json")), &tok); err != nil {
		t.Fatal(err)
	}
	if tok.XDSAddress != srv.xds || len(tok.CASHA256) != 64 {
		t.Fatalf("join token answer: %+v", tok)
	}
	text := mustRun(t, srv.admin, "node", "token", "edge-1")
	if !strings.Contains(text, "meshca bootstrap --server "+srv.xds+" --node edge-1 --token ") {
		t.Fatalf("node token does not print the bootstrap command:\n%s", text)
	}
	fields := strings.Fields(text[strings.Index(text, "--token "):])
	token := fields[1]

	out := filepath.Join(t.TempDir(), "edge-1")
	bootstrap := func(pin, tok string) result {
		return meshca(t, "", "bootstrap", "--server", srv.xds, "--node", "edge-1", "--token", tok, "--ca-sha256", pin, "--out", out)
	}
	// A wrong pin stops the client before it sends the token.
	wrongPin := strings.Repeat("ab", 32)
	if r := bootstrap(wrongPin, token); r.code == 0 || !strings.Contains(r.stderr, "not signed by the meshca CA you pinned") {
		t.Fatalf("wrong pin: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(out); err == nil {
		t.Fatal("files written after a refused join")
	}
	// The first token was replaced by `node token`.
	if r := bootstrap(tok.CASHA256, tok.Token); r.code == 0 || !strings.Contains(r.stderr, "not valid") {
		t.Fatalf("replaced token: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := bootstrap(tok.CASHA256, token); r.code != 0 {
		t.Fatalf("bootstrap: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := bootstrap(tok.CASHA256, token); r.code == 0 || !strings.Contains(r.stderr, "already used") {
		t.Fatalf("reused token: exit %d, stderr %q", r.code, r.stderr)
	}

	for _, f := range []string{"node.pem", "node-key.pem", "bundle.pem", "meshca-issuers.pem", "node-sds.yaml", "bundle-sds.yaml", "envoy.yaml", "meshca-node.json"} {
		fi, err := os.Stat(filepath.Join(out, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, err, fi)
		}
	}
	envoyYAML, _ := os.ReadFile(filepath.Join(out, "envoy.yaml"))
	if _, err := envoycheck.ParseEnvoy(envoyYAML); err != nil {
		t.Fatalf("envoy.yaml does not validate: %v", err)
	}
	for _, f := range []string{"node-sds.yaml", "bundle-sds.yaml"} {
		y, _ := os.ReadFile(filepath.Join(out, f))
		if _, err := envoycheck.ParseSDS(y); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
	}
	vout, err := exec.Command("openssl", "verify", "-CAfile", filepath.Join(out, "bundle.pem"), "-untrusted", filepath.Join(out, "node.pem"), filepath.Join(out, "node.pem")).CombinedOutput()
	if err != nil || !strings.Contains(string(vout), ": OK") {
		t.Fatalf("openssl verify node.pem: %v\n%s", err, vout)
	}
	leaf := testkit.ParseCertPEM(t, mustRead(t, filepath.Join(out, "node.pem")))
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://mesh.local/node/edge-1" {
		t.Fatalf("node certificate SAN = %v", leaf.URIs)
	}

	var n api.Node
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "node", "show", "edge-1", "-o", "json")), &n); err != nil || !n.Joined || n.Kind != "front-proxy" {
		t.Fatalf("node show: %+v %v", n, err)
	}

	// The node renews its certificate with the current one; the key stays.
	keyBefore := mustRead(t, filepath.Join(out, "node-key.pem"))
	if r := meshca(t, "", "bootstrap", "renew", "--dir", out); r.code != 0 || !strings.Contains(r.stdout, "renewed node edge-1") {
		t.Fatalf("renew: exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
	}
	renewed := testkit.ParseCertPEM(t, mustRead(t, filepath.Join(out, "node.pem")))
	if renewed.SerialNumber.Cmp(leaf.SerialNumber) == 0 || string(mustRead(t, filepath.Join(out, "node-key.pem"))) != string(keyBefore) {
		t.Fatal("renew did not replace the certificate, or replaced the key")
	}
	// A revoked node cannot renew, and is told why.
	mustRun(t, srv.admin, "node", "revoke", "edge-1", "--reason", "test")
	if r := meshca(t, "", "bootstrap", "renew", "--dir", out); r.code == 0 || !strings.Contains(r.stderr, `node "edge-1" was revoked`) {
		t.Fatalf("renew of a revoked node: exit %d, stderr %q", r.code, r.stderr)
	}
	// Nor can it get a new join token.
	if r := meshca(t, srv.admin, "node", "token", "edge-1"); r.code == 0 || !strings.Contains(r.stderr, "was revoked and can never join again") {
		t.Fatalf("node token of a revoked node: exit %d, stderr %q", r.code, r.stderr)
	}

	// A grpc node gets a grpc-go bootstrap instead of envoy.yaml.
	var gtok api.JoinToken
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "node", "add", "g1", "--identity", "web", "--kind", "grpc", "-o", "json")), &gtok); err != nil {
		t.Fatal(err)
	}
	gout := filepath.Join(t.TempDir(), "g1")
	tokFile := filepath.Join(t.TempDir(), "token")
	writeFile(t, tokFile, []byte(gtok.Token+"\n"))
	// The trust bundle holds only the root, which an organisation may
	// share with other CAs: it does not identify meshca.
	if r := meshca(t, "", "bootstrap", "--server", srv.xds, "--node", "g1", "--token-file", tokFile, "--ca-file", filepath.Join(out, "bundle.pem"), "--out", gout); r.code == 0 || !strings.Contains(r.stderr, "not signed by the meshca CA you pinned") {
		t.Fatalf("bootstrap pinned to the root: exit %d, stderr %q", r.code, r.stderr)
	}
	if r := meshca(t, "", "bootstrap", "--server", srv.xds, "--node", "g1", "--token-file", tokFile, "--ca-file", filepath.Join(out, "meshca-issuers.pem"), "--out", gout); r.code != 0 {
		t.Fatalf("grpc bootstrap: exit %d, stderr %q", r.code, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(gout, "grpc-bootstrap.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(gout, "envoy.yaml")); err == nil {
		t.Fatal("envoy.yaml written for a grpc node")
	}
	if strings.Contains(srv.logs(), token) || strings.Contains(srv.logs(), gtok.Token) {
		t.Fatal("a join token reached the server log")
	}
	srv.stop(t)
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func splitFirstPEM(t *testing.T, data []byte) (first, rest []byte) {
	t.Helper()
	block, rest := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatalf("not a PEM certificate chain: %q", data)
	}
	return pem.EncodeToMemory(block), rest
}

func writeFile(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestAdminMTLS(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"), "--admin-mtls-listen", "127.0.0.1:0")
	if srv.adminMTLS == "" {
		t.Fatalf("no mTLS listener in the start line:\n%s", srv.logs())
	}
	mustRun(t, srv.admin, "identity", "add", "ops", "--admin-access")
	mustRun(t, srv.admin, "identity", "add", "echo")
	opsDir, echoDir := filepath.Join(t.TempDir(), "ops"), filepath.Join(t.TempDir(), "echo")
	mustRun(t, srv.admin, "cert", "issue", "ops", "--out", opsDir)
	mustRun(t, srv.admin, "cert", "issue", "echo", "--out", echoDir)
	for _, f := range []string{"cert.pem", "key.pem", "bundle.pem", "meshca-ca.pem"} {
		fi, err := os.Stat(filepath.Join(opsDir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", f, err, fi)
		}
	}
	creds := func(dir string) []string {
		return []string{"--tls-cert", filepath.Join(dir, "cert.pem"), "--tls-key", filepath.Join(dir, "key.pem"), "--tls-ca", filepath.Join(dir, "meshca-ca.pem")}
	}

	// An admin identity's certificate works, and the audit names it.
	mustRun(t, srv.adminMTLS, append(creds(opsDir), "identity", "add", "remote-added")...)
	var evs []api.AuditEvent
	if err := json.Unmarshal([]byte(mustRun(t, srv.adminMTLS, append(creds(opsDir), "audit", "list", "-o", "json")...)), &evs); err != nil {
		t.Fatal(err)
	}
	var actor string
	for _, e := range evs {
		if e.Action == "identity.add" && e.Identity == "remote-added" {
			actor = e.Actor
		}
	}
	if actor != "spiffe://mesh.local/ops" {
		t.Fatalf("actor of the remote add = %q", actor)
	}

	// A valid certificate of a non-admin identity is refused and audited.
	r := meshca(t, srv.adminMTLS, append(creds(echoDir), "identity", "list")...)
	if r.code == 0 {
		t.Fatalf("non-admin certificate accepted: %s", r.stdout)
	}
	// No certificate at all: the CLI refuses to speak plain HTTP off loopback
	// only, so talk plain HTTP here and expect a failure.
	if r := meshca(t, srv.adminMTLS, "identity", "list"); r.code == 0 {
		t.Fatal("plain HTTP accepted on the mTLS listener")
	}
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "audit", "list", "-o", "json")), &evs); err != nil {
		t.Fatal(err)
	}
	denied := false
	for _, e := range evs {
		if e.Action == "admin.auth" && e.Outcome == "denied" && e.Actor == "spiffe://mesh.local/echo" {
			denied = true
		}
	}
	if !denied {
		t.Fatalf("refused admin login not audited: %+v", evs)
	}
	srv.stop(t)
}

func TestMeshCLI(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	mustRun(t, srv.admin, "identity", "add", "edge", "--dns", "echo.example.com")
	mustRun(t, srv.admin, "node", "add", "edge-1", "--identity", "edge", "--kind", "front-proxy")
	examples := filepath.Join("..", "..", "testdata", "mesh", "examples")

	// No mesh yet: show says what to do.
	if r := meshca(t, srv.admin, "mesh", "show"); r.code == 0 || !strings.Contains(r.stderr, "meshca mesh apply -f FILE") {
		t.Fatalf("show before apply: %d %q", r.code, r.stderr)
	}
	// A file with several errors lists all of them with their paths; nothing is stored.
	bad := filepath.Join(t.TempDir(), "bad.yaml")
	writeFile(t, bad, []byte("services:\n  - name: echo\n    endpoints: [{address: 10.0.0, port: 70000}]\n  - name: echo\n    endpoints: [{address: 10.0.0.1, port: 80}]\nroutes:\n  - name: r\n    domains: []\n    rules: [{service: nope}]\nbogus: 1\n"))
	r := meshca(t, srv.admin, "mesh", "apply", "-f", bad)
	if r.code == 0 {
		t.Fatal("invalid mesh accepted")
	}
	for _, want := range []string{"services[0].endpoints[0].address", "services[0].endpoints[0].port", "services[1].name", "routes[0].rules[0].service", "bogus"} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("error output lacks %q:\n%s", want, r.stderr)
		}
	}
	if r := meshca(t, srv.admin, "mesh", "history", "-o", "json"); r.code != 0 || strings.TrimSpace(r.stdout) != "[]" {
		t.Fatalf("history after a refused apply: %q", r.stdout)
	}

	// The front proxy demo, adapted to this node's identity name.
	doc, err := os.ReadFile(filepath.Join(examples, "http-front-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "mesh.yaml")
	writeFile(t, file, doc)
	dry := mustRun(t, srv.admin, "mesh", "apply", "-f", file, "--dry-run")
	if !strings.Contains(dry, "dry run") || !strings.Contains(dry, "node edge-1:") || !strings.Contains(dry, "add") {
		t.Fatalf("dry run output:\n%s", dry)
	}
	if r := meshca(t, srv.admin, "mesh", "show"); r.code == 0 {
		t.Fatal("dry run stored the mesh")
	}
	if out := mustRun(t, srv.admin, "mesh", "apply", "-f", file); !strings.Contains(out, "applied mesh version 1") {
		t.Fatalf("apply: %s", out)
	}
	if out := mustRun(t, srv.admin, "mesh", "show", "-o", "yaml"); !strings.Contains(out, "# mesh version 1") || !strings.Contains(out, "services:") {
		t.Fatalf("show -o yaml:\n%s", out)
	}
	var shown struct {
		Version int            `json:"version"`
		Mesh    map[string]any `json:"mesh"`
	}
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "mesh", "show", "-o", "json")), &shown); err != nil || shown.Version != 1 || shown.Mesh["services"] == nil {
		t.Fatalf("show -o json: %+v %v", shown, err)
	}
	// Change a port, then roll back to version 1 as version 3.
	writeFile(t, file, []byte(strings.Replace(string(doc), "port: 8080", "port: 8081", 1)))
	mustRun(t, srv.admin, "mesh", "apply", "-f", file)
	if out := mustRun(t, srv.admin, "mesh", "apply", "--version", "1"); !strings.Contains(out, "applied mesh version 3") {
		t.Fatalf("rollback: %s", out)
	}
	var hist []api.MeshVersion
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "mesh", "history", "-o", "json")), &hist); err != nil || len(hist) != 3 || !strings.Contains(hist[2].AppliedBy, "rollback to 1") {
		t.Fatalf("history: %+v %v", hist, err)
	}
	v1 := mustRun(t, srv.admin, "mesh", "show", "--version", "1", "-o", "json")
	v3 := mustRun(t, srv.admin, "mesh", "show", "--version", "3", "-o", "json")
	var a, b struct {
		Mesh map[string]any `json:"mesh"`
	}
	json.Unmarshal([]byte(v1), &a)
	json.Unmarshal([]byte(v3), &b)
	ja, _ := json.Marshal(a.Mesh)
	jb, _ := json.Marshal(b.Mesh)
	if string(ja) != string(jb) {
		t.Fatal("rolled-back version differs from version 1")
	}
	// The node cannot lose the identity its 8080 front proxy... does not need; but an
	// unassign that the mesh cannot serve is refused. (The http demo has no HTTPS
	// listener, so edge keeps working without it.)
	srv.stop(t)
}

func TestBulkIdentityAdd(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	file := filepath.Join(t.TempDir(), "ids.txt")
	var b strings.Builder
	b.WriteString("# services of the shop\n\n")
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&b, "svc-%02d dns=svc-%02d.mesh.local ttl=30m\n", i, i)
	}
	b.WriteString("ops admin\nbad name here\nsvc-00\n") // bad field; duplicate
	writeFile(t, file, []byte(b.String()))
	r := meshca(t, srv.admin, "identity", "add", "--from", file)
	if r.code == 0 {
		t.Fatal("bulk add with bad lines exited 0")
	}
	if !strings.Contains(r.stderr, "33/33 done, 2 failed") || !strings.Contains(r.stderr, "2 of 33 lines failed; 31 identities added") ||
		!strings.Contains(r.stderr, `unknown field "name"`) || !strings.Contains(r.stderr, "already exists") {
		t.Fatalf("stderr:\n%s", r.stderr)
	}
	if n := strings.Count(r.stdout, "\n"); n != 31 {
		t.Fatalf("%d identities printed, want 31:\n%s", n, r.stdout)
	}
	var ids []api.Identity
	if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "identity", "list", "-o", "json")), &ids); err != nil || len(ids) != 31 {
		t.Fatalf("%d identities, %v", len(ids), err)
	}
	srv.stop(t)
}

// TestReissueAllCLI re-keys every identity with `identity reissue --all`
// and checks each one got a new serial, the refusals of a malformed call,
// and the run's audit record.
func TestReissueAllCLI(t *testing.T) {
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	serials := map[string]string{}
	for i := 0; i < 12; i++ {
		name := fmt.Sprintf("svc-%02d", i)
		mustRun(t, srv.admin, "identity", "add", name)
	}
	list := func() []api.Identity {
		var ids []api.Identity
		if err := json.Unmarshal([]byte(mustRun(t, srv.admin, "identity", "list", "-o", "json")), &ids); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	for _, id := range list() {
		serials[id.Name] = id.Cert.Serial
	}
	out := mustRun(t, srv.admin, "identity", "reissue", "--all")
	if !strings.Contains(out, "re-keyed 12 of 12 identities") || !strings.Contains(out, "(0 failed)") {
		t.Fatalf("stdout: %s", out)
	}
	for _, id := range list() {
		if id.Cert == nil || id.Cert.Serial == serials[id.Name] {
			t.Errorf("%s kept serial %s", id.Name, serials[id.Name])
		}
	}
	for _, args := range [][]string{{"identity", "reissue"}, {"identity", "reissue", "svc-01", "--all"}} {
		if r := meshca(t, srv.admin, args...); r.code == 0 || !strings.Contains(r.stderr, "NAME or --all") {
			t.Errorf("%v: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
	// The API refuses a body that does not ask for everything.
	resp, err := http.Post("http://"+srv.admin+api.PathReissue, "application/json", strings.NewReader(`{"all": false}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("{all: false}: %s, want 400", resp.Status)
	}
	if audit := mustRun(t, srv.admin, "audit", "list"); !strings.Contains(audit, "identity.reissue_all") || !strings.Contains(audit, "reissued=12 failed=0") {
		t.Errorf("audit has no summary of the run:\n%s", audit)
	}
	srv.stop(t)
}
