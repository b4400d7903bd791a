package main_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshca/meshca/internal/api"
	bootstrapfiles "github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/mesh"
)

// walkthroughPaused is the line the walkthrough script prints after the
// README's block, before it waits on its standard input: the server and
// the agents the block started are still running.
const walkthroughPaused = "walkthrough: paused"

// scriptOutput collects a script's combined output, closes paused when the
// walkthroughPaused line appears, and signals changed on every write.
type scriptOutput struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	paused  chan struct{}
	changed chan struct{} // capacity 1
}

func (o *scriptOutput) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.buf.Write(b)
	if bytes.Contains(o.buf.Bytes(), []byte(walkthroughPaused+"\n")) {
		select {
		case <-o.paused:
		default:
			close(o.paused)
		}
	}
	select {
	case o.changed <- struct{}{}:
	default:
	}
	return len(b), nil
}

// lines returns the output's lines that start with prefix, without it,
// once there are n of them; it fails the test after timeout.
func (o *scriptOutput) lines(t *testing.T, prefix string, n int, timeout time.Duration) []string {
	t.Helper()
	deadline := time.After(timeout)
	for {
		var got []string
		for _, line := range strings.Split(o.String(), "\n") {
			if rest, ok := strings.CutPrefix(line, prefix); ok {
				got = append(got, rest)
			}
		}
		if len(got) >= n {
			return got
		}
		select {
		case <-o.changed:
		case <-deadline:
			t.Fatalf("%d lines %q after %s, want %d:\n%s", len(got), prefix, timeout, n, o)
		}
	}
}

func (o *scriptOutput) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.buf.String()
}

// TestREADMEWalkthrough runs the README's walkthrough block with bash,
// everything but Envoy and curl (stubbed: no Envoy can run here), against
// the real binary. The walkthrough's own ports (admin 8100, xDS 6600) are
// replaced with free ones, so that a server on the default or the
// walkthrough ports does not get in the way; nothing else is changed.
// The script then pauses with the server and the node agents it started
// still running, and the test checks every node: an agent node, whose
// agent wrote a valid envoy.yaml before Envoy was started on it, pointing
// at the agent's SDS socket, which serves the node's certificates for keys
// meshca never held; and what the nodes receive fits the walkthrough's
// curls and the identities the mesh expects (checkWalkthroughMesh). Last,
// the script's exit stops the server and the agents, cleanly.
func TestREADMEWalkthrough(t *testing.T) {
	block := readmeBlock(t, "walkthrough")
	for _, def := range []string{":8000", ":6565"} {
		if strings.Contains(block, def) {
			t.Fatalf("the walkthrough uses the default port %s, which a `make run` server holds", def)
		}
	}
	var subst []string
	ports := map[string]string{}
	for _, port := range []string{":8100", ":6600"} {
		if !strings.Contains(block, port) {
			t.Fatalf("the walkthrough no longer uses its port %s: update this test", port)
		}
		ports[port] = ":" + testkit.FreePort(t)
		subst = append(subst, port, ports[port])
	}
	block = strings.NewReplacer(subst...).Replace(block)
	admin, xdsAddr := "127.0.0.1"+ports[":8100"], "127.0.0.1"+ports[":6600"]

	dir := readmeDir(t)
	script := "set -euo pipefail\n" +
		// Envoy is not run; the stub notes the bootstrap it would start on
		// and whether that file was there yet.
		`envoy() { if [ -s "$2" ]; then echo "envoy-stub: $*"; else echo "envoy-stub: $2 missing"; fi; }` + "\n" +
		// The README greps curl's headers; without Envoy there are none.
		// The stub notes each call on stderr for the checks below.
		"curl() { echo \"curl-stub: $*\" >&2; printf 'x-upstream-host: (no envoy in tests)\\nlocation: (no envoy in tests)\\n'; }\n" +
		// Background jobs (the server, the agents) get SIGTERM on exit.
		"trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" +
		block + "\n" +
		"echo '" + walkthroughPaused + "'\n" +
		"read -r _ || true\n"
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MESHCA_ADMIN=")
	out := &scriptOutput{paused: make(chan struct{}), changed: make(chan struct{}, 1)}
	cmd.Stdout, cmd.Stderr = out, out
	resume, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		resume.Close()
		if cmd.ProcessState == nil {
			cancel()
			<-done
		}
	})
	serverLog := func() string {
		log, _ := os.ReadFile(filepath.Join(dir, "demo", "server.log"))
		return string(log)
	}
	select {
	case <-out.paused:
	case err := <-done:
		t.Fatalf("walkthrough failed: %v\n%s\nserver log:\n%s", err, out, serverLog())
	case <-ctx.Done():
		t.Fatalf("walkthrough did not finish within 2 minutes:\n%s\nserver log:\n%s", out, serverLog())
	}

	text := out.String()
	for _, want := range []string{"applied mesh version 1", "applied mesh version 4", "wrote cert.pem"} {
		if !strings.Contains(text, want) {
			t.Fatalf("walkthrough output lacks %q:\n%s", want, text)
		}
	}
	if strings.Contains(text, "PRIVATE KEY") {
		t.Fatal("the walkthrough printed key material")
	}
	var nodes []api.Node
	if err := json.Unmarshal([]byte(mustRun(t, admin, "node", "list", "-o", "json")), &nodes); err != nil {
		t.Fatal(err)
	}
	if len(nodes) != 3 {
		t.Fatalf("%d nodes, want 3 (edge-1, echo-1, billing-1)", len(nodes))
	}
	// The Envoys start in the background: their stubs may print late.
	envoys := out.lines(t, "envoy-stub: ", len(nodes), 10*time.Second)
	sockets := map[string]string{}
	adminPorts := map[uint32]string{}
	for _, n := range nodes {
		nodeDir := filepath.Join(dir, "demo", n.Name)
		if !n.Agent {
			t.Fatalf("node %s is not an agent node: the walkthrough runs every proxy with an agent", n.Name)
		}
		envoyYAML := filepath.Join("demo", n.Name, bootstrapfiles.EnvoyFile)
		if !slices.ContainsFunc(envoys, func(e string) bool { return strings.HasPrefix(e, "-c "+envoyYAML+" ") }) {
			t.Fatalf("Envoy of %s was not started on %s once it existed: %v", n.Name, envoyYAML, envoys)
		}
		agentLog := mustRead(t, filepath.Join(dir, "demo", n.Name+".log"))
		if !bytes.Contains(agentLog, []byte("node "+n.Name+" joined")) || bytes.Contains(agentLog, []byte("PRIVATE KEY")) {
			t.Fatalf("agent of %s: its log has no join, or key material:\n%s", n.Name, agentLog)
		}
		b, err := envoycheck.ParseEnvoy(mustRead(t, filepath.Join(dir, envoyYAML)))
		if err != nil {
			t.Fatalf("%s: %v", n.Name, err)
		}
		port := b.GetAdmin().GetAddress().GetSocketAddress().GetPortValue()
		if other, ok := adminPorts[port]; ok {
			t.Fatalf("the Envoys of %s and %s both use admin port %d", other, n.Name, port)
		}
		adminPorts[port] = n.Name
		for _, c := range b.GetStaticResources().GetClusters() {
			if c.GetName() == mesh.AgentSDSCluster {
				sockets[n.Name] = c.GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetPipe().GetPath()
			}
		}
		if want := filepath.Join(nodeDir, "sds.sock"); sockets[n.Name] != want {
			t.Fatalf("%s's envoy.yaml takes secrets from %q, want the agent's socket %s", n.Name, sockets[n.Name], want)
		}
		// The socket serves the node's certificates, for keys made by the
		// agent: meshca's data directory never held them.
		names := []string{"spiffe://mesh.local"}
		for _, id := range n.Identities {
			names = append(names, "spiffe://mesh.local/"+id)
		}
		secrets := agentSecrets(t, sockets[n.Name], names...)
		for _, name := range names[1:] {
			leaf, key := secretPair(t, secrets[name])
			if uriOf(leaf) != name {
				t.Fatalf("%s: the secret %s holds a certificate for %q", n.Name, name, uriOf(leaf))
			}
			if dataDirHolds(t, filepath.Join(dir, "demo", "data"), key.D.Bytes()) {
				t.Fatalf("%s: meshca's data directory holds the key of %s", n.Name, name)
			}
			t.Logf("node %s (agent): %s served on its SDS socket, serial %s, key made by the agent", n.Name, name, leaf.SerialNumber.Text(16))
		}
	}

	// The curls after the last mesh apply run against the final mesh.
	var curls []string
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "applied mesh version") {
			curls = nil
		}
		if c, ok := strings.CutPrefix(line, "curl-stub: "); ok {
			curls = append(curls, c)
		}
	}
	checkWalkthroughMesh(t, dir, curls, admin, xdsAddr, sockets)

	// The script's exit stops the server and the agents: each agent removes
	// its socket when it stops cleanly.
	resume.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("walkthrough exit: %v\n%s", err, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the walkthrough's server and agents did not stop within 30s\n%s", out)
	}
	for node, socket := range sockets {
		if _, err := os.Lstat(socket); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("the agent of %s left its socket behind (not stopped cleanly): %v", node, err)
		}
	}
	if log := serverLog(); !strings.Contains(log, "meshca stopped") {
		t.Errorf("the walkthrough's server did not stop cleanly:\n%s", log)
	}
	// Everything the walkthrough wrote is under demo/, which git ignores.
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if !slices.Contains([]string{"bin", "testdata", "demo"}, e.Name()) {
			t.Errorf("the walkthrough wrote %s outside demo/", e.Name())
		}
	}
}

// dataDirHolds reports whether any file under dir contains b.
func dataDirHolds(t *testing.T, dir string, b []byte) bool {
	t.Helper()
	found, scanned := false, 0
	err := filepath.Walk(dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		scanned += len(data)
		found = found || bytes.Contains(data, b)
		return nil
	})
	if err != nil || scanned == 0 {
		t.Fatalf("scan of %s: %v (%d bytes)", dir, err, scanned)
	}
	return found
}

// TestREADMEWalkthroughPlainNode runs the walkthrough's simple option for
// the front proxy as the README says: the walkthrough's node add of edge-1
// without --agent, then the walkthrough-plain block (bootstrap, and
// bootstrap renew --watch left running). The node's Envoy then takes its
// secrets over ADS, and meshca serves it the front identity's certificate
// with a key.
func TestREADMEWalkthroughPlainNode(t *testing.T) {
	var nodeAdd string
	for _, line := range strings.Split(readmeBlock(t, "walkthrough"), "\n") {
		if strings.HasPrefix(line, "bin/meshca node add edge-1 ") {
			nodeAdd = line
		}
	}
	if !strings.Contains(nodeAdd, " --agent") {
		t.Fatalf("the walkthrough adds edge-1 with %q, not as an agent node: update this test", nodeAdd)
	}
	nodeAdd = strings.Replace(nodeAdd, " --agent", "", 1)
	block := readmeBlock(t, "walkthrough-plain")
	if !strings.Contains(block, "localhost:6600") {
		t.Fatal("the simple option no longer joins localhost:6600: update this test")
	}
	srv := startServer(t, filepath.Join(t.TempDir(), "data"))
	_, port, err := net.SplitHostPort(srv.xds)
	if err != nil {
		t.Fatal(err)
	}
	block = strings.ReplaceAll(block, "localhost:6600", "localhost:"+port)

	dir := readmeDir(t)
	script := "set -euo pipefail\n" +
		"trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\n" +
		"mkdir -p demo\n" +
		"bin/meshca identity add front --dns echo.example.com\n" +
		"bin/meshca ca pin > demo/meshca-ca.pem\n" +
		nodeAdd + "\n" +
		block + "\n" +
		"kill -0 $!\n" + // bootstrap renew --watch is still running
		"echo 'renewal running'\n"
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "bash", "-c", script)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "MESHCA_ADMIN="+srv.admin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("the simple option failed: %v\n%s", err, out)
	}
	for _, want := range []string{"node edge-1 joined", "renewal running"} {
		if !strings.Contains(string(out), want) {
			t.Fatalf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(string(out), "PRIVATE KEY") {
		t.Fatal("the simple option printed key material")
	}

	nodeDir := filepath.Join(dir, "demo", "edge-1")
	if _, err := envoycheck.ParseEnvoy(mustRead(t, filepath.Join(nodeDir, bootstrapfiles.EnvoyFile))); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"echo", "billing", "ops"} {
		mustRun(t, srv.admin, "identity", "add", id)
	}
	mustRun(t, srv.admin, "mesh", "apply", "-f", filepath.Join("..", "..", "testdata", "mesh", "examples", "https-front-proxy.yaml"))
	v := fetchNode(t, srv.xds, nodeDir, "edge-1", "")
	_, l := listenerOn([]*nodeView{v}, 8443)
	dtc := &tlsv3.DownstreamTlsContext{}
	if l == nil || !tlsContext(t, l.GetFilterChains()[0].GetTransportSocket(), dtc) {
		t.Fatalf("edge-1 has no TLS listener on 8443: %v", slices.Collect(maps.Keys(v.listeners)))
	}
	cert := v.ownCert(t, dtc.GetCommonTlsContext())
	name := dtc.GetCommonTlsContext().GetTlsCertificateSdsSecretConfigs()[0].GetName()
	if uriOf(cert) != "spiffe://mesh.local/front" || len(v.secrets[name].GetTlsCertificate().GetPrivateKey().GetInlineBytes()) == 0 {
		t.Fatalf("edge-1 is served %s for %s, without its key from meshca", uriOf(cert), name)
	}
	t.Logf("plain node edge-1: %s and its key served by meshca over ADS, serial %s", name, cert.SerialNumber.Text(16))
	srv.stop(t)
}
