package app_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// replicaOn starts a meshca replica on the etcd at endpoint, with the
// key-encryption key of the replica started in kekFrom ("" for the first).
func replicaOn(t *testing.T, endpoint, kekFrom string, tweaks ...func(*config.Config)) (*mesh, string) {
	t.Helper()
	onEtcd := func(c *config.Config) {
		c.Store.Etcd = config.Etcd{Endpoints: []string{endpoint}, Prefix: "/meshca-failover"}
		for _, tw := range tweaks {
			tw(c)
		}
	}
	dir := filepath.Join(t.TempDir(), "data")
	if kekFrom != "" {
		kek, err := os.ReadFile(filepath.Join(kekFrom, "kek"))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "kek"), kek, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return startMeshIn(t, nil, dir, onEtcd), dir
}

// twoReplicas starts two meshca replicas on one embedded etcd, sharing the
// key-encryption key, and waits until each lists both.
func twoReplicas(t *testing.T, tweaks ...func(*config.Config)) (a, b *mesh) {
	t.Helper()
	e := testkit.StartEtcd(t)
	a, dirA := replicaOn(t, e.Endpoint, "", tweaks...)
	b, _ = replicaOn(t, e.Endpoint, dirA, tweaks...)
	waitReplicas(t, a, b)
	return a, b
}

// waitReplicas waits until each of ms lists exactly their xDS addresses.
func waitReplicas(t *testing.T, ms ...*mesh) {
	t.Helper()
	var want []string
	for _, m := range ms {
		want = append(want, m.app.XDS)
	}
	slices.Sort(want)
	for _, m := range ms {
		var rs []api.Replica
		if !pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
			rs = nil
			m.admin("GET", api.PathReplicas, nil, &rs, http.StatusOK)
			var got []string
			for _, r := range rs {
				got = append(got, r.XDS)
				if r.Self != (r.ID == m.app.ReplicaID) || r.Since.IsZero() {
					t.Fatalf("replica %+v as listed by %s (%s)", r, m.app.ReplicaID, m.app.XDS)
				}
			}
			slices.Sort(got)
			return slices.Equal(got, want)
		}) {
			t.Fatalf("replicas listed by %s: %+v, want xDS addresses %v", m.app.XDS, rs, want)
		}
	}
}

// runCLI runs meshca's command line in-process.
func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	err := cli.Execute(ctx, cli.Config{Stdout: &stdout, Stderr: &stderr}, args)
	return stdout.String() + stderr.String(), err
}

func pemCount(b []byte) int {
	n := 0
	for block, rest := pem.Decode(b); block != nil; block, rest = pem.Decode(rest) {
		n++
	}
	return n
}

func crlHas(t *testing.T, bundle *tlsv3.Secret, serial string) bool {
	for _, crl := range testkit.ParseCRLs(t, bundle.GetValidationContext().GetCrl().GetInlineBytes()) {
		for _, e := range crl.RevokedCertificateEntries {
			if fmt.Sprintf("%x", e.SerialNumber) == serial {
				return true
			}
		}
	}
	return false
}

// TestNodeFailsOverToAnotherReplica: a node bootstrapped at replica A
// (meshca bootstrap, pinning meshca by CA hash) has both replicas in its
// envoy.yaml; connected to A, it reconnects to B when A stops and receives
// there the next CRL and the next trust-bundle change made through B. Node
// authentication and authorization are the same on both replicas, and a
// renewal with A gone is answered by B.
func TestNodeFailsOverToAnotherReplica(t *testing.T) {
	a, b := twoReplicas(t)
	a.addIdentity("web")
	other := a.addIdentity("other")

	// Each replica's status page and meshca status list both, marking
	// the one that answered.
	for _, m := range []*mesh{a, b} {
		resp, err := m.http.Get("http://" + m.app.Admin + "/")
		if err != nil {
			t.Fatal(err)
		}
		page := string(readBody(t, resp))
		for _, r := range []*mesh{a, b} {
			row := fmt.Sprintf(`<tr class="replica" data-id="%s">`, r.app.ReplicaID)
			_, rest, ok := strings.Cut(page, row)
			if !ok || !strings.Contains(rest, "<code class=\"xds\">"+r.app.XDS+"</code>") {
				t.Fatalf("status page of %s lacks replica %s at %s", m.app.XDS, r.app.ReplicaID, r.app.XDS)
			}
			if self := strings.Contains(rest[:strings.Index(rest, "</tr>")], "(this one)"); self != (r == m) {
				t.Fatalf("status page of %s marks %s as itself: %v", m.app.XDS, r.app.ReplicaID, self)
			}
		}
		out, err := runCLI(t, "status", "--admin", m.app.Admin)
		if err != nil {
			t.Fatalf("meshca status: %v\n%s", err, out)
		}
		for _, r := range []*mesh{a, b} {
			want := regexp.MustCompile(`(?m)^replica +` + r.app.ReplicaID + ` xDS ` + regexp.QuoteMeta(r.app.XDS) + `, up since `)
			if !want.MatchString(out) {
				t.Fatalf("meshca status at %s lacks %q:\n%s", m.app.XDS, want, out)
			}
		}
		if strings.Count(out, "(this one)") != 1 {
			t.Fatalf("meshca status at %s:\n%s", m.app.XDS, out)
		}
	}

	// meshca bootstrap at A learns both replicas; the CA pin printed by A
	// is good for B (same issuing CA, each replica its own certificate).
	tok := a.addNode("edge", "sidecar", "web")
	dir := filepath.Join(t.TempDir(), "edge")
	if out, err := runCLI(t, "bootstrap", "--server", a.app.XDS, "--node", "edge", "--token", tok.Token, "--ca-sha256", tok.CASHA256, "--out", dir); err != nil {
		t.Fatalf("bootstrap at A: %v\n%s", err, out)
	}
	var nf nodeapi.NodeFile
	raw, err := os.ReadFile(filepath.Join(dir, cli.NodeFile))
	if err != nil || json.Unmarshal(raw, &nf) != nil {
		t.Fatalf("node file: %v", err)
	}
	if want := []string{a.app.XDS, b.app.XDS}; !slices.Equal(nf.Servers, want) {
		t.Fatalf("node file servers = %v, want %v (the joined replica first)", nf.Servers, want)
	}
	tokB := a.addNode("edge-b", "sidecar", "web")
	if out, err := runCLI(t, "bootstrap", "--server", b.app.XDS, "--node", "edge-b", "--token", tokB.Token, "--ca-sha256", tokB.CASHA256, "--out", filepath.Join(t.TempDir(), "edge-b")); err != nil {
		t.Fatalf("bootstrap at B with the pin A printed: %v\n%s", err, out)
	}

	// Authentication is the store's: a node joined via A is served by B
	// (its own secrets only); once revoked via A, B refuses it.
	n2 := a.joined("n2", "web")
	s2 := subscribe(t, b, "n2", n2, secretName(""), secretName("web"))
	if got := s2.next(); got[secretName("web")] == nil {
		t.Fatalf("B served n2 (joined via A) %v", names(got))
	}
	// Authorization too: B refuses n2 a secret assigned to no node of its.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	foreign, err := discovery.NewAggregatedDiscoveryServiceClient(b.dial(n2)).StreamAggregatedResources(sctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := foreign.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n2"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("other")}}); err != nil {
		t.Fatal(err)
	}
	if c := recvErr(t, foreign); c != codes.PermissionDenied {
		t.Fatalf("n2 asking B for other's secret: %v, want PermissionDenied", c)
	}
	a.admin("POST", api.PathNodes+"/n2/revoke", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(b.dial(n2)).StreamAggregatedResources(ctx)
	if err == nil {
		err = ads.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n2"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("web")}})
	}
	if err == nil {
		_, err = ads.Recv()
	}
	if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unauthenticated && c != codes.Unavailable {
		t.Fatalf("B served n2 after its revocation via A: %v", err)
	}
	t.Logf("node revoked via A, refused by B: %v", status.Code(err))

	// The node connects to A, the first endpoint.
	node := testkit.NewXDSNode(t, dir, "edge", "mesh.local", secretName(""), secretName("web"))
	node.Start()
	first := node.Until("first answer", 10*time.Second, func(u testkit.XDSUpdate) bool { return u.Secrets[secretName("web")] != nil })
	if first.Server != a.app.XDS {
		t.Fatalf("node connected first to %s, want A %s", first.Server, a.app.XDS)
	}

	// A stops; the node is on B with the current state.
	killed := time.Now()
	a.stop()
	var web api.Identity
	b.admin("GET", api.PathIdentities+"/web", nil, &web, http.StatusOK)
	onB := node.Until("reconnect to B", 10*time.Second, func(u testkit.XDSUpdate) bool { return u.Server == b.app.XDS })
	var lost time.Time
	select {
	case lost = <-node.Ended:
	default:
		t.Fatal("the node is on B but its stream to A never ended")
	}
	if got := serialOf(t, onB.Secrets[secretName("web")]); got != web.Cert.Serial {
		t.Fatalf("B served web serial %s, current is %s", got, web.Cert.Serial)
	}
	// A stops gracefully: its streams end once the xDS server's drain
	// time is over (a killed process ends them at once).
	reconnect := onB.At.Sub(lost)
	t.Logf("replica A stopped -> its stream to the node ended: %s; stream ended -> node connected to B and current: %s (stop to current: %s)",
		lost.Sub(killed), reconnect, onB.At.Sub(killed))
	if reconnect > 2*time.Second {
		t.Errorf("reconnecting to B took %s after the failure was detected, want under 2s", reconnect)
	}

	// The next CRL, made on B, reaches the node.
	start := time.Now()
	b.admin("POST", api.PathRevoke+"/other", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	node.Until("CRL with other's serial", 10*time.Second, func(u testkit.XDSUpdate) bool {
		bundle := u.Secrets[secretName("")]
		return u.Server == b.app.XDS && bundle != nil && crlHas(t, bundle, other.Cert.Serial)
	})
	t.Logf("revocation on B -> CRL at the failed-over node: %s", time.Since(start))

	// The next trust-bundle change (a root rotation publishes the new
	// root), made on B, reaches the node.
	roots := pemCount(onB.Secrets[secretName("")].GetValidationContext().GetTrustedCa().GetInlineBytes())
	start = time.Now()
	b.admin("POST", api.PathCARotate, api.RotateCARequest{Root: true}, nil, http.StatusOK)
	node.Until("bundle with the new root", 20*time.Second, func(u testkit.XDSUpdate) bool {
		bundle := u.Secrets[secretName("")]
		return u.Server == b.app.XDS && bundle != nil && pemCount(bundle.GetValidationContext().GetTrustedCa().GetInlineBytes()) > roots
	})
	t.Logf("root rotation on B -> new root in the failed-over node's bundle: %s", time.Since(start))

	// With A gone, meshca bootstrap renew moves on to B.
	out, err := runCLI(t, "bootstrap", "renew", "--dir", dir)
	if err != nil {
		t.Fatalf("renew with A stopped: %v\n%s", err, out)
	}
	if !bytes.Contains([]byte(out), []byte("at "+b.app.XDS)) {
		t.Fatalf("renewal was not answered by B:\n%s", out)
	}
}

// TestGRPCFallsBackToAnotherReplica: a proxyless grpc-go node whose
// bootstrap lists replica A first and B second starts while A is down:
// grpc-go falls back to B (gRFC A71), routes by what B serves, and
// receives B's next change.
func TestGRPCFallsBackToAnotherReplica(t *testing.T) {
	a, b := twoReplicas(t)
	ports := map[string][]int{"echo-a": {startEcho(t, "A")}, "echo-b": {startEcho(t, "B")}}
	// Both weights above 0, so that both clusters are in the first
	// configuration and the change below only moves weights.
	a.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(ports, 50, 50)}, nil, http.StatusCreated)
	_, portA, _ := net.SplitHostPort(a.app.XDS)
	_, portB, _ := net.SplitHostPort(b.app.XDS)
	// The node joins (at A) before A goes.
	start := time.Now()
	c := grpcClientOf(t, a, "g1", "localhost:"+portA, "localhost:"+portB)
	a.stop()
	// The calls wait for the channel to be ready, as an application
	// riding a fallback does. grpc-go keeps dialling A: each failure
	// while a resource is asked of B but not yet received fails that
	// resource for the moment (an endpoints resource fails with "produced
	// zero addresses"), and a fail-fast call in that moment fails. B's
	// answer replaces the failure; waiting calls are then routed. Were B
	// to serve no endpoints, they would time out.
	eventually(t, c, "routes from B with A down", func(g map[string]int) bool { return g["A"] > 0 && g["B"] > 0 }, grpc.WaitForReady(true))
	t.Logf("grpc-go with replica A down: first routed RPCs through B's configuration after %s", time.Since(start))

	b.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: echoMesh(ports, 0, 100)}, nil, http.StatusCreated)
	eventually(t, c, "B's next change", func(g map[string]int) bool { return g["B"] == 40 })
	var n api.Node
	b.admin("GET", api.PathNodes+"/g1", nil, &n, http.StatusOK)
	if !n.Connection.Connected || n.Connection.NACKs != 0 {
		t.Fatalf("g1 as B sees it: %+v", n.Connection)
	}
}

// TestAdvertisedAddress: a replica's xds.advertise is what it registers,
// what node add tells nodes, and a name its own server certificate covers
// (grpc-go checks it), next to the SPIFFE ID Envoy checks.
func TestAdvertisedAddress(t *testing.T) {
	const host = "replica-1.mesh.internal"
	var advertised string
	m := startMeshIn(t, nil, filepath.Join(t.TempDir(), "data"), func(c *config.Config) {
		// The port is only told, not bound: this replica listens on a free one.
		advertised = net.JoinHostPort(host, "16565")
		c.XDS.Advertise = advertised
	})
	var rs []api.Replica
	if !pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
		rs = nil
		m.admin("GET", api.PathReplicas, nil, &rs, http.StatusOK)
		return len(rs) == 1
	}) || rs[0].XDS != advertised || !rs[0].Self || rs[0].ID != m.app.ReplicaID {
		t.Fatalf("replicas on bbolt = %+v, want this one at %s", rs, advertised)
	}
	m.addIdentity("web")
	tok := m.addNode("edge", "sidecar", "web")
	if tok.XDSAddress != advertised {
		t.Fatalf("node add tells nodes %q, want %s", tok.XDSAddress, advertised)
	}
	// The join answer carries the list only when asked: a client that
	// predates it refuses unknown fields.
	for _, ask := range []bool{false, true} {
		tok := m.addNode(fmt.Sprintf("n-%v", ask), "sidecar", "web")
		_, csr := testkit.NewCSR(t)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		if ask {
			ctx = metadata.AppendToOutgoingContext(ctx, nodeapi.ReplicasHeader, "1")
		}
		var answer map[string]any
		err := m.dial(nil).Invoke(ctx, nodeapi.FullJoinMethod, &nodeapi.JoinRequest{Node: fmt.Sprintf("n-%v", ask), Token: tok.Token, CSRPEM: csr},
			&answer, grpc.ForceCodec(nodeapi.Codec{}))
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		got, has := answer["replicas"]
		if has != ask || (ask && fmt.Sprint(got) != "["+advertised+"]") {
			t.Fatalf("asked for replicas: %v; answer's replicas: %v (present: %v)", ask, got, has)
		}
	}

	conn, err := tls.Dial("tcp", m.app.XDS, m.serverTLS(nil))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	leaf := conn.ConnectionState().PeerCertificates[0]
	if err := leaf.VerifyHostname(host); err != nil {
		t.Fatalf("the server certificate does not cover the advertised host: %v (DNS %v)", err, leaf.DNSNames)
	}
}

// TestRenewRefreshesReplicas: a node bootstrapped while A was the only
// replica learns of B at its next renewal: the node file and envoy.yaml
// then list both (Envoy's admin port kept); a renewal with nothing new
// rewrites nothing.
func TestRenewRefreshesReplicas(t *testing.T) {
	e := testkit.StartEtcd(t)
	a, dirA := replicaOn(t, e.Endpoint, "")
	waitReplicas(t, a)
	a.addIdentity("web")
	tok := a.addNode("edge", "sidecar", "web")
	dir := filepath.Join(t.TempDir(), "edge")
	if out, err := runCLI(t, "bootstrap", "--server", a.app.XDS, "--node", "edge", "--token", tok.Token, "--ca-sha256", tok.CASHA256,
		"--out", dir, "--envoy-admin-port", "19001"); err != nil {
		t.Fatalf("bootstrap: %v\n%s", err, out)
	}
	servers := func() []string {
		var nf nodeapi.NodeFile
		raw, err := os.ReadFile(filepath.Join(dir, cli.NodeFile))
		if err != nil || json.Unmarshal(raw, &nf) != nil {
			t.Fatalf("node file: %v", err)
		}
		return nf.Servers
	}
	if got := servers(); !slices.Equal(got, []string{a.app.XDS}) {
		t.Fatalf("servers with one replica: %v", got)
	}

	b, _ := replicaOn(t, e.Endpoint, dirA)
	waitReplicas(t, a, b)
	out, err := runCLI(t, "bootstrap", "renew", "--dir", dir)
	if err != nil || !strings.Contains(out, "meshca replicas are now") {
		t.Fatalf("renew: %v\n%s", err, out)
	}
	want := []string{a.app.XDS, b.app.XDS}
	if got := servers(); !slices.Equal(got, want) {
		t.Fatalf("node file servers after renewal: %v, want %v", got, want)
	}
	y, err := os.ReadFile(filepath.Join(dir, bootstrap.EnvoyFile))
	if err != nil {
		t.Fatal(err)
	}
	eb, err := envoycheck.ParseEnvoy(y)
	if err != nil {
		t.Fatalf("rewritten envoy.yaml: %v", err)
	}
	if port := eb.GetAdmin().GetAddress().GetSocketAddress().GetPortValue(); port != 19001 {
		t.Errorf("Envoy admin port after the rewrite: %d, want 19001", port)
	}
	if got := testkit.NewXDSNode(t, dir, "edge", "mesh.local").Servers; !slices.Equal(got, want) {
		t.Fatalf("envoy.yaml endpoints after renewal: %v, want %v", got, want)
	}
	if out, err := runCLI(t, "bootstrap", "renew", "--dir", dir); err != nil || strings.Contains(out, "meshca replicas are now") {
		t.Fatalf("second renewal: %v\n%s", err, out)
	}
}

// TestManyNodesFailOver: n nodes connected to replica A, A stops; every
// node is on B with the current state within a bound of the first stream
// ending (the failure detected). Short: 10 nodes, 5 s (it runs under
// -race on a loaded machine). MESHCA_SOAK=1 (make soak-tests, no -race):
// 1,000 nodes, 15 s: the nodes' 1,000 TLS handshakes run in this process
// too, on the same cores as both replicas and etcd.
func TestManyNodesFailOver(t *testing.T) {
	n, bound := 10, 5*time.Second
	if testkit.Soak() {
		n, bound = 1000, 15*time.Second
	}
	// Every node connects from 127.0.0.1: let them all handshake at once,
	// as nodes on their own addresses would.
	a, b := twoReplicas(t, func(c *config.Config) {
		c.XDS.MaxUnauthenticatedConnections = 1024
		c.XDS.MaxUnauthenticatedPerAddress = 1024
	})
	a.addIdentity("web")
	all := make([]*testkit.XDSNode, n)
	for i := range all {
		name := fmt.Sprintf("node-%d", i)
		cert := a.joined(name, "web")
		all[i] = testkit.NewXDSNodeTLS(t, name, []string{a.app.XDS, b.app.XDS}, a.serverTLS(cert), secretName(""), secretName("web"))
	}
	for _, nd := range all {
		nd.Start()
	}
	// A node whose first stream came before A had followed its join on
	// the etcd feed is refused there and goes on to B: it is not A's.
	var nodes []*testkit.XDSNode
	for _, nd := range all {
		if u := nd.Until("first answer", 30*time.Second, func(u testkit.XDSUpdate) bool { return true }); u.Server == a.app.XDS {
			nodes = append(nodes, nd)
		}
	}
	if len(nodes) < n*9/10 {
		t.Fatalf("only %d of %d nodes were served by A first", len(nodes), n)
	}
	n = len(nodes)

	stopped := time.Now()
	a.stop()
	var web api.Identity
	b.admin("GET", api.PathIdentities+"/web", nil, &web, http.StatusOK)
	var firstLost, lastCurrent time.Time
	perNode := make([]time.Duration, 0, n)
	for _, nd := range nodes {
		onB := nd.Until("on B", 30*time.Second, func(u testkit.XDSUpdate) bool { return u.Server == b.app.XDS })
		if got := serialOf(t, onB.Secrets[secretName("web")]); got != web.Cert.Serial {
			t.Fatalf("B served web serial %s, current is %s", got, web.Cert.Serial)
		}
		var lost time.Time
		select {
		case lost = <-nd.Ended:
		default:
			t.Fatal("a node is on B but its stream to A never ended")
		}
		if firstLost.IsZero() || lost.Before(firstLost) {
			firstLost = lost
		}
		if onB.At.After(lastCurrent) {
			lastCurrent = onB.At
		}
		perNode = append(perNode, onB.At.Sub(lost))
	}
	slices.Sort(perNode)
	took := lastCurrent.Sub(firstLost)
	t.Logf("%d nodes on A (of %d): A stopped -> first stream ended %s; first stream ended -> all current on B %s; per node, stream ended -> current: p50 %s, p99 %s, max %s",
		n, len(all), firstLost.Sub(stopped), took, perNode[n/2], perNode[n*99/100], perNode[n-1])
	if took > bound {
		t.Errorf("%d nodes took %s after the failure was detected, want under %s", n, took, bound)
	}
}
