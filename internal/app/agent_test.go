package app_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// addAgent registers an agent node for the identities and joins it.
func (m *mesh) addAgent(node string, ids ...string) *tls.Certificate {
	m.t.Helper()
	var tok api.JoinToken
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: node, Kind: "sidecar", Identities: ids, Agent: true}, &tok, http.StatusCreated)
	if !tok.Node.Agent {
		m.t.Fatalf("node %s added without the agent mark: %+v", node, tok.Node)
	}
	cert, err := m.join(node, tok.Token)
	if err != nil {
		m.t.Fatalf("join %s: %v", node, err)
	}
	return cert
}

// agentCSR is a key made here, as a node's agent makes it, and a DER CSR
// signed by it.
func agentCSR(t *testing.T) (*ecdsa.PrivateKey, []byte) {
	t.Helper()
	key, p := testkit.NewCSR(t)
	b, _ := pem.Decode([]byte(p))
	return key, b.Bytes
}

// signCSR calls SignCSR over conn, a node's connection, as an agent does.
// It returns the answer decoded, and as it came over the wire.
func signCSR(t *testing.T, conn *grpc.ClientConn, ident string, csr []byte) (*nodeapi.SignResponse, []byte, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
	defer cancel()
	var raw json.RawMessage
	if err := conn.Invoke(ctx, nodeapi.FullSignMethod, &nodeapi.SignRequest{Identity: ident, CSR: csr}, &raw, grpc.ForceCodec(nodeapi.Codec{})); err != nil {
		return nil, nil, err
	}
	var resp nodeapi.SignResponse
	if err := (nodeapi.Codec{}).Unmarshal(raw, &resp); err != nil {
		t.Fatalf("SignCSR answer: %v", err)
	}
	return &resp, raw, nil
}

// checkSigned checks that resp is a certificate of ident, from meshca's CA,
// for key, and carries no key.
func checkSigned(t *testing.T, m *mesh, resp *nodeapi.SignResponse, raw []byte, ident string, key *ecdsa.PrivateKey) *x509.Certificate {
	t.Helper()
	if bytes.Contains(raw, []byte("PRIVATE KEY")) || bytes.Contains(bytes.ToLower(raw), []byte(`"key"`)) {
		t.Fatal("SignCSR answer carries a key")
	}
	leaf := testkit.ParseCertPEM(t, []byte(resp.ChainPEM))
	if !key.PublicKey.Equal(leaf.PublicKey) {
		t.Fatal("certificate is not for the agent's own key")
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != secretName(ident) {
		t.Fatalf("certificate names %v, want %s", leaf.URIs, secretName(ident))
	}
	if got := leaf.SerialNumber.Text(16); got != resp.Serial {
		t.Fatalf("serial %s, answer says %s", got, resp.Serial)
	}
	pair, err := testkit.TLSCert(resp.ChainPEM, key)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := testkit.VerifyChain(pair.Certificate, x509.VerifyOptions{Roots: m.bundle(), CurrentTime: m.clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Fatalf("certificate does not verify against the bundle: %v", err)
	}
	return leaf
}

// TestAgentSignsNodeCSRs: an agent node gets a certificate for its own key
// over its authenticated connection; a second agent node holding the same
// identity gets its own; nothing else gets one; no key is in any answer, in
// the agent nodes' xDS snapshots or in the store.
func TestAgentSignsNodeCSRs(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	m.addIdentity("api")
	a1, a2 := m.addAgent("agent-1", "web"), m.addAgent("agent-2", "web")
	plain := m.joined("plain-1", "web")
	conn1, conn2 := m.dial(a1), m.dial(a2)

	key1, csr1 := agentCSR(t)
	resp1, raw1, err := signCSR(t, conn1, "web", csr1)
	if err != nil {
		t.Fatalf("agent-1: %v", err)
	}
	checkSigned(t, m, resp1, raw1, "web", key1)
	key2, csr2 := agentCSR(t)
	resp2, raw2, err := signCSR(t, conn2, "web", csr2)
	if err != nil {
		t.Fatalf("agent-2: %v", err)
	}
	checkSigned(t, m, resp2, raw2, "web", key2)
	if resp1.Serial == resp2.Serial {
		t.Fatal("both holders got the same certificate")
	}

	// Each holder's certificate is recorded with its node.
	var shown api.Identity
	m.admin("GET", api.PathIdentities+"/web", nil, &shown, http.StatusOK)
	holders := map[string]string{}
	for _, h := range shown.Holders {
		holders[h.Node] = h.Cert.Serial
		if h.Cert.State != "valid" {
			t.Errorf("holder %s: certificate %s", h.Node, h.Cert.State)
		}
	}
	if len(holders) != 2 || holders["agent-1"] != resp1.Serial || holders["agent-2"] != resp2.Serial {
		t.Fatalf("identity show lists holders %v, want agent-1=%s agent-2=%s", holders, resp1.Serial, resp2.Serial)
	}
	var n api.Node
	m.admin("GET", api.PathNodes+"/agent-1", nil, &n, http.StatusOK)
	if !n.Agent {
		t.Fatal("node show: agent-1 not marked as an agent node")
	}
	// The CLI: --agent, and what node and identity show print.
	m.mustCLI("node", "add", "agent-cli", "--identity", "web", "--agent")
	for args, want := range map[string][]string{
		"node show agent-cli": {"sidecar (agent)"},
		"node list":           {"agent-1", "sidecar (agent)", "plain-1"},
		"identity show web":   {"node agent-1:", resp1.Serial, "node agent-2:", resp2.Serial, "(its own key)"},
	} {
		out := m.mustCLI(strings.Fields(args)...)
		for _, w := range want {
			if !strings.Contains(out, w) {
				t.Fatalf("meshca %s: no %q in\n%s", args, w, out)
			}
		}
	}
	page, err := m.http.Get("http://" + m.app.Admin + "/")
	if err != nil {
		t.Fatal(err)
	}
	html := string(readBody(t, page))
	for _, want := range []string{`data-holder="agent-1"`, `data-holder="agent-2"`, resp1.Serial, resp2.Serial, `<span class="agent">(agent)</span>`} {
		if !strings.Contains(html, want) {
			t.Fatalf("status page lacks %s", want)
		}
	}
	signed := 0
	for _, e := range m.audit() {
		if e.Action == registry.ActionAgentSign && e.Outcome == "ok" && e.Identity == "web" && (e.Node == "agent-1" || e.Node == "agent-2") {
			signed++
		}
	}
	if signed != 2 {
		t.Fatalf("%d audit records of signed CSRs naming their node, want 2", signed)
	}
	if v, _ := sample(t, scrape(t, m), `meshca_certificates_issued_total{kind="agent"}`); v != 2 {
		t.Fatalf("metrics count %v certificates signed for agents, want 2", v)
	}

	// Refusals, each by a real client over TLS.
	forged := slices.Clone(csr1)
	forged[len(forged)-1] ^= 0x01 // last byte of the signature
	huge := make([]byte, 64<<10)
	_, _ = rand.Read(huge)
	for _, tc := range []struct {
		name  string
		conn  *grpc.ClientConn
		ident string
		csr   []byte
		want  codes.Code
	}{
		{"plain node", m.dial(plain), "web", csr1, codes.PermissionDenied},
		{"identity not assigned", conn1, "api", csr1, codes.PermissionDenied},
		{"unknown identity", conn1, "nope", csr1, codes.PermissionDenied},
		{"forged CSR", conn1, "web", forged, codes.InvalidArgument},
		{"oversized CSR", conn1, "web", huge, codes.InvalidArgument},
		{"empty CSR", conn1, "web", nil, codes.InvalidArgument},
		{"no node certificate", m.dial(nil), "web", csr1, codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := signCSR(t, tc.conn, tc.ident, tc.csr)
			if got := status.Code(err); got != tc.want {
				t.Fatalf("got %v (%v), want %v", got, err, tc.want)
			}
		})
	}
	// A request carrying a key is not even read: the codec refuses unknown
	// fields, which grpc-go 1.85 reports as Internal before the method's own
	// InvalidArgument mapping runs.
	ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
	defer cancel()
	withKey := struct {
		Identity string `json:"identity"`
		CSR      []byte `json:"csr"`
		Key      string `json:"key"`
	}{"web", csr1, "-----BEGIN PRIVATE KEY-----"}
	var out json.RawMessage
	if err := conn1.Invoke(ctx, nodeapi.FullSignMethod, &withKey, &out, grpc.ForceCodec(nodeapi.Codec{})); status.Code(err) != codes.InvalidArgument && status.Code(err) != codes.Internal {
		t.Fatalf("request with a key field: %v, want it refused undecoded", err)
	}
	if d := m.denials(registry.ActionAgentSign); d < 6 {
		t.Fatalf("%d refused CSRs counted, want at least 6", d)
	}

	// An agent node's ADS stream carries the bundle and no identity key;
	// a plain node holding the same identity gets meshca's key.
	got := subscribe(t, m, "agent-1", a1, secretName(""), secretName("web")).next()
	if _, ok := got[secretName("")]; !ok {
		t.Fatalf("agent node got %v, want the trust bundle", names(got))
	}
	for name, s := range got {
		if s.GetTlsCertificate() != nil {
			t.Fatalf("agent node was sent the key of %s", name)
		}
	}
	if s := subscribe(t, m, "plain-1", plain, secretName("web")).next()[secretName("web")]; s.GetTlsCertificate().GetPrivateKey() == nil {
		t.Fatal("plain node got no key for web")
	}
	assertNoAgentKeys(t, m, resp1, key1, key2)
}

// assertNoAgentKeys stops meshca and scans its database file for the
// agents' private keys, in every encoding meshca could have written. The
// signed certificate is there in the clear: the scan does see records.
func assertNoAgentKeys(t *testing.T, m *mesh, signed *nodeapi.SignResponse, keys ...*ecdsa.PrivateKey) {
	t.Helper()
	m.stop()
	db, err := os.ReadFile(filepath.Join(m.dir, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	leaf := testkit.ParseCertPEM(t, []byte(signed.ChainPEM))
	if !bytes.Contains(db, leaf.Raw) && !bytes.Contains(db, []byte(b64(leaf.Raw))) {
		t.Fatal("the signed certificate is not in the store file: the scan sees nothing")
	}
	for i, k := range keys {
		pkcs8, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		d, _ := k.Bytes()
		for what, b := range map[string][]byte{"scalar": d, "PKCS#8": pkcs8, "PKCS#8 base64": []byte(b64(pkcs8)), "scalar base64": []byte(b64(d)[:40])} {
			if bytes.Contains(db, b) {
				t.Fatalf("agent key %d (%s) found in the store file", i+1, what)
			}
		}
	}
	t.Logf("store file of %d bytes holds none of %d agent keys", len(db), len(keys))
}

func b64(b []byte) string {
	out, _ := json.Marshal(b) // encoding/json's base64, as the store writes []byte
	return strings.Trim(string(out), `"`)
}

// TestAgentCSRFlood: a node's CSRs are bounded per window, across a
// restart of meshca, and allowed again once the window has passed.
func TestAgentCSRFlood(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	m.addIdentity("web")
	a1 := m.addAgent("agent-1", "web")
	conn := m.dial(a1)
	const tries = 60
	limit := registry.SignBurst + registry.SignPerIdentity*1
	ok, limited := 0, 0
	start := time.Now()
	for range tries {
		_, csr := agentCSR(t)
		_, _, err := signCSR(t, conn, "web", csr)
		switch status.Code(err) {
		case codes.OK:
			ok++
		case codes.ResourceExhausted:
			limited++
		default:
			t.Fatalf("CSR: %v", err)
		}
	}
	took := time.Since(start)
	t.Logf("flood of %d CSRs from one agent node: %d signed, %d refused as rate limited (limit %d per %s), in %s",
		tries, ok, limited, limit, registry.SignWindow, took.Round(time.Millisecond))
	if ok != limit || limited != tries-limit {
		t.Fatalf("%d signed and %d limited, want %d and %d", ok, limited, limit, tries-limit)
	}
	audited := 0
	for _, e := range m.audit() {
		if e.Action == registry.ActionAgentSign && e.Outcome == "denied" {
			audited++
		}
	}
	if audited == 0 || audited > 3 {
		t.Fatalf("%d audit records for %d refusals, want a few (aggregated)", audited, limited)
	}

	// The count is in the store: a restart does not reset it.
	m = m.restart()
	_, csr := agentCSR(t)
	if _, _, err := signCSR(t, m.dial(a1), "web", csr); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("after a restart: %v, want ResourceExhausted", err)
	}
	clk.Add(registry.SignWindow)
	key, csr := agentCSR(t)
	resp, raw, err := signCSR(t, m.dial(a1), "web", csr)
	if err != nil {
		t.Fatalf("after the window: %v", err)
	}
	checkSigned(t, m, resp, raw, "web", key)
}

// crlWatch follows the trust bundle secret of a node, as its Envoy does.
type crlWatch struct {
	t *testing.T
	p *proxy
}

// until waits for a bundle whose CRL lists every serial of want, and
// returns the serials it lists.
func (w crlWatch) until(want ...string) map[string]bool {
	w.t.Helper()
	deadline := time.Now().Add(recvTimeout)
	for time.Now().Before(deadline) {
		b, ok := w.p.next()[secretName("")]
		if !ok {
			continue
		}
		got := crlOf(w.t, b)
		if !slices.ContainsFunc(want, func(s string) bool { return !got[s] }) {
			return got
		}
	}
	w.t.Fatalf("CRL does not list %v within %s", want, recvTimeout)
	return nil
}

func crlOf(t *testing.T, b *tlsv3.Secret) map[string]bool {
	return testkit.Revoked(t, b.GetValidationContext().GetCrl().GetInlineBytes())
}

// TestAgentRevokePerHolder: node revoke and unassign take only that
// node's certificates; the other holder keeps its own until the identity
// is revoked, which takes every holder's.
func TestAgentRevokePerHolder(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	certs := map[string]*tls.Certificate{}
	serials := map[string]string{}
	for _, n := range []string{"agent-1", "agent-2", "agent-3", "agent-4"} {
		certs[n] = m.addAgent(n, "web")
		_, csr := agentCSR(t)
		resp, _, err := signCSR(t, m.dial(certs[n]), "web", csr)
		if err != nil {
			t.Fatalf("%s: %v", n, err)
		}
		serials[n] = resp.Serial
	}
	watch := crlWatch{t: t, p: subscribe(t, m, "agent-2", certs["agent-2"], secretName(""))}

	var res api.Revoked
	start := time.Now()
	m.admin("POST", api.PathNodes+"/agent-1/revoke", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	if !slices.Contains(res.Serials, serials["agent-1"]) || slices.Contains(res.Serials, serials["agent-2"]) || slices.Contains(res.Serials, serials["agent-3"]) {
		t.Fatalf("node revoke revoked %v; want agent-1's %s and no other holder's", res.Serials, serials["agent-1"])
	}
	crl := watch.until(serials["agent-1"])
	t.Logf("node revoke of agent-1 to its certificate on the CRL at agent-2: %s", time.Since(start).Round(time.Millisecond))
	if crl[serials["agent-2"]] || crl[serials["agent-3"]] {
		t.Fatal("the other holders' certificates are on the CRL after one node's revocation")
	}
	if _, _, err := signCSR(t, m.dial(certs["agent-1"]), "web", mustCSR(t)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("revoked agent node's CSR: %v, want PermissionDenied", err)
	}
	key, csr := agentCSR(t)
	resp, raw, err := signCSR(t, m.dial(certs["agent-2"]), "web", csr)
	if err != nil {
		t.Fatalf("the other holder after one node's revocation: %v", err)
	}
	checkSigned(t, m, resp, raw, "web", key)
	renewed := resp.Serial

	// Unassigning the identity from an agent node revokes that node's
	// certificate for it.
	start = time.Now()
	m.admin("DELETE", api.PathNodes+"/agent-3/identities/web", nil, nil, http.StatusOK)
	crl = watch.until(serials["agent-3"])
	t.Logf("unassign from agent-3 to its certificate on the CRL: %s", time.Since(start).Round(time.Millisecond))
	if crl[serials["agent-2"]] || crl[renewed] {
		t.Fatal("agent-2's certificates are on the CRL after web was taken from agent-3")
	}

	// A new join of an agent node revokes what its agent had signed: the
	// keys may be on the old machine.
	var tok api.JoinToken
	m.admin("POST", api.PathNodes+"/agent-4/token", struct{}{}, &tok, http.StatusOK)
	if _, err := m.join("agent-4", tok.Token); err != nil {
		t.Fatal(err)
	}
	crl = watch.until(serials["agent-4"])
	if crl[serials["agent-2"]] || crl[renewed] {
		t.Fatal("agent-2's certificates are on the CRL after agent-4 joined again")
	}

	start = time.Now()
	m.admin("POST", api.PathRevoke+"/web", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	watch.until(serials["agent-2"], renewed)
	t.Logf("identity revoke to every holder certificate on the CRL: %s", time.Since(start).Round(time.Millisecond))
	if _, _, err := signCSR(t, m.dial(certs["agent-2"]), "web", mustCSR(t)); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("CSR for a revoked identity: %v, want PermissionDenied", err)
	}
	var shown api.Identity
	m.admin("GET", api.PathIdentities+"/web", nil, &shown, http.StatusOK)
	for _, h := range shown.Holders {
		if h.Cert.State != "revoked" {
			t.Fatalf("holder %s of a revoked identity: certificate %s", h.Node, h.Cert.State)
		}
	}
}

func mustCSR(t *testing.T) []byte {
	_, csr := agentCSR(t)
	return csr
}
