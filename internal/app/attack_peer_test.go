package app_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/cli"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/testkit"
)

// orgCA is a CA of an organisation PKI, as a test holds it.
type orgCA struct{ *testkit.CA }

// orgPKI makes an organisation root with two intermediates: the first is
// imported as meshca's, the second is a sibling CA the attacker controls.
func orgPKI(t *testing.T) (root, meshcas, sibling orgCA) {
	t.Helper()
	year := time.Now().Add(365 * 24 * time.Hour)
	org := func(cn string) pkix.Name { return pkix.Name{CommonName: cn, Organization: []string{"Example Org"}} }
	root = orgCA{testkit.NewCA(t, org("Example Org Root"), time.Now().Add(10*365*24*time.Hour), nil)}
	return root, orgCA{testkit.NewCA(t, org("Example Org meshca CA"), year, root.CA)}, orgCA{testkit.NewCA(t, org("Example Org team CA"), year, root.CA)}
}

// mint signs a leaf for pub with uri and serial, as any holder of ca's key
// can.
func (ca orgCA) mint(t *testing.T, uri string, serial *big.Int, pub crypto.PublicKey, eku x509.ExtKeyUsage) *x509.Certificate {
	t.Helper()
	u, err := url.Parse(uri)
	if err != nil {
		t.Fatal(err)
	}
	return ca.Sign(t, &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{Organization: []string{"mesh.local"}},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{eku}, URIs: []*url.URL{u},
	}, pub)
}

// importOrgCA makes meshcas meshca's issuing CA, under root.
func importOrgCA(m *mesh, meshcas, root orgCA) {
	m.t.Helper()
	m.admin("POST", api.PathCAImport, api.ImportCARequest{
		CertPEM: string(testkit.CertPEM(meshcas.Cert.Raw)) + string(testkit.CertPEM(root.Cert.Raw)),
		KeyPEM:  string(testkit.KeyPEM(m.t, meshcas.Key)),
	}, nil, http.StatusOK)
}

// fetchSecret asks for an identity's secret over standalone SDS, as node
// with cert. It returns the secret, or the error of the call.
func fetchSecret(m *mesh, cert *tls.Certificate, node, ident string) (*tlsv3.Secret, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := secretservice.NewSecretDiscoveryServiceClient(m.dial(cert)).FetchSecrets(ctx,
		&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName(ident)}})
	if err != nil {
		return nil, err
	}
	return secretIn(resp.GetResources(), ident)
}

// secretIn finds ident's secret among an answer's resources.
func secretIn(res []*anypb.Any, ident string) (*tlsv3.Secret, error) {
	for _, a := range res {
		sec := &tlsv3.Secret{}
		if a.UnmarshalTo(sec) == nil && sec.GetName() == secretName(ident) {
			return sec, nil
		}
	}
	return nil, fmt.Errorf("no secret %s in the answer", ident)
}

// adsSecret opens an ADS stream as node with cert and waits for the first
// answer (or the stream's end).
func adsSecret(m *mesh, cert *tls.Certificate, node, ident string) (*tlsv3.Secret, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName(ident)}}); err != nil {
		return nil, err
	}
	r, err := s.Recv()
	if err != nil {
		return nil, err
	}
	return secretIn(r.GetResources(), ident)
}

// adminPOST calls the mTLS admin listener with cert, as a remote operator.
func adminPOST(m *mesh, cert *tls.Certificate, path string, body any) (int, error) {
	b, _ := json.Marshal(body)
	c := mtlsClient(cert)
	defer c.CloseIdleConnections()
	resp, err := c.Post("https://"+m.app.AdminMTLS+path, "application/json", bytes.NewReader(b))
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

func withAdminMTLS(c *config.Config) { c.Admin.MTLSListen = "127.0.0.1:0" }

// TestSiblingCAImpersonation attacks meshca after `ca import` under an
// organisation root that has a second intermediate: every certificate the
// sibling CA mints with a victim's SPIFFE ID and serial is refused, as node,
// as admin and as meshca's own server.
func TestSiblingCAImpersonation(t *testing.T) {
	m := startMeshIn(t, nil, filepath.Join(t.TempDir(), "data"), withAdminMTLS)
	root, meshcas, sibling := orgPKI(t)
	importOrgCA(m, meshcas, root)
	m.addIdentity("web")
	victim := m.joined("victim", "web")

	// Control: the victim's own certificate receives web's key.
	if _, err := fetchSecret(m, victim, "victim", "web"); err != nil {
		t.Fatalf("the victim's own certificate: %v", err)
	}

	t.Run("node certificate from the sibling CA", func(t *testing.T) {
		key := testkit.Key(t)
		forged := sibling.mint(t, victim.Leaf.URIs[0].String(), victim.Leaf.SerialNumber, key.Public(), x509.ExtKeyUsageClientAuth)
		cert := testkit.Pair(forged, key, sibling.Cert, root.Cert)
		before := m.denials("xds.auth")
		sec, err := fetchSecret(m, cert, "victim", "web")
		if err == nil || sec != nil {
			t.Fatalf("SDS fetch with a sibling-minted node certificate: secret %v, err %v", sec != nil, err)
		}
		t.Logf("SDS fetch with the sibling's certificate: %v", status.Code(err))
		sec, err = adsSecret(m, cert, "victim", "web")
		if err == nil || sec != nil {
			t.Fatalf("ADS stream with a sibling-minted node certificate: secret %v, err %v", sec != nil, err)
		}
		t.Logf("ADS stream with the sibling's certificate: %v", status.Code(err))
		if m.denials("xds.auth") <= before {
			t.Fatal("refused handshake not audited")
		}
	})

	t.Run("forged leaf with the victim's serial under meshca's own CA", func(t *testing.T) {
		// Even a holder of the issuing key cannot substitute a leaf: the
		// presented bytes must be the certificate meshca recorded.
		key := testkit.Key(t)
		forged := meshcas.mint(t, victim.Leaf.URIs[0].String(), victim.Leaf.SerialNumber, key.Public(), x509.ExtKeyUsageClientAuth)
		before := m.denials("node.auth")
		if sec, err := fetchSecret(m, testkit.Pair(forged, key, meshcas.Cert), "victim", "web"); err == nil || sec != nil {
			t.Fatalf("forged leaf with the victim's serial: secret %v, err %v", sec != nil, err)
		}
		if m.denials("node.auth") <= before {
			t.Fatal("forged leaf not audited as node.auth")
		}
	})

	t.Run("admin certificate from the sibling CA", func(t *testing.T) {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "ops", Admin: true}, nil, http.StatusCreated)
		ops := m.issueCert("ops")
		if code, err := adminPOST(m, ops, api.PathIdentities, api.AddIdentityRequest{Name: "by-ops", Admin: true}); err != nil || code != http.StatusCreated {
			t.Fatalf("control: the real admin credential: %d %v", code, err)
		}
		key := testkit.Key(t)
		forged := sibling.mint(t, "spiffe://mesh.local/ops", ops.Leaf.SerialNumber, key.Public(), x509.ExtKeyUsageClientAuth)
		code, err := adminPOST(m, testkit.Pair(forged, key, sibling.Cert, root.Cert), api.PathIdentities, api.AddIdentityRequest{Name: "by-sibling", Admin: true})
		if err == nil {
			t.Fatalf("sibling-minted admin certificate answered %d", code)
		}
		t.Logf("admin POST with the sibling's certificate: %v", err)
		m.admin("GET", api.PathIdentities+"/by-sibling", nil, nil, http.StatusNotFound)
		// The right serial under meshca's own CA, another key: not the
		// recorded certificate.
		forged = meshcas.mint(t, "spiffe://mesh.local/ops", ops.Leaf.SerialNumber, key.Public(), x509.ExtKeyUsageClientAuth)
		if code, err := adminPOST(m, testkit.Pair(forged, key, meshcas.Cert), api.PathIdentities, api.AddIdentityRequest{Name: "by-forgery", Admin: true}); err == nil {
			t.Fatalf("admin leaf with the right serial and another key answered %d", code)
		}
		m.admin("GET", api.PathIdentities+"/by-forgery", nil, nil, http.StatusNotFound)
	})

	t.Run("server certificate from the sibling CA", func(t *testing.T) {
		tok := m.addNode("late", "sidecar", "web")
		if want := sha256.Sum256(meshcas.Cert.Raw); tok.CASHA256 != hex.EncodeToString(want[:]) {
			t.Fatalf("node add pins %s, want meshca's issuing CA", tok.CASHA256)
		}
		// The impostor presents a sibling-minted spiffe://mesh.local/meshca
		// with every CA of the organisation in its chain, meshca's too.
		key := testkit.Key(t)
		leaf := sibling.mint(t, "spiffe://mesh.local/meshca", big.NewInt(7), key.Public(), x509.ExtKeyUsageServerAuth)
		ln, calls := impostor(t, testkit.Pair(leaf, key, sibling.Cert, meshcas.Cert, root.Cert))

		bootstrap := func(server string, pin ...string) (string, error) {
			var stdout, stderr bytes.Buffer
			args := append([]string{"bootstrap", "--server", server, "--node", "late", "--token", tok.Token, "--out", filepath.Join(t.TempDir(), "late")}, pin...)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := cli.Execute(ctx, cli.Config{Stdout: &stdout, Stderr: &stderr}, args)
			return stderr.String(), err
		}
		rootFile := filepath.Join(t.TempDir(), "root.pem")
		if err := os.WriteFile(rootFile, testkit.CertPEM(root.Cert.Raw), 0o600); err != nil {
			t.Fatal(err)
		}
		rootSum := sha256.Sum256(root.Cert.Raw)
		for _, pin := range [][]string{
			{"--ca-sha256", tok.CASHA256}, // exactly as node add prints it
			{"--ca-sha256", hex.EncodeToString(rootSum[:])},
			{"--ca-file", rootFile},
		} {
			stderr, err := bootstrap(ln.Addr().String(), pin...)
			if err == nil || !strings.Contains(stderr, "not signed by the meshca CA you pinned") {
				t.Fatalf("bootstrap %v against the impostor: err %v, stderr %q", pin, err, stderr)
			}
		}
		select {
		case method := <-calls:
			t.Fatalf("the impostor received a call (%s): the token was sent", method)
		default:
		}
		t.Logf("bootstrap against the impostor: refused 3 of 3 pins, 0 calls reached it")
		// Control: the impostor does record a client that trusts it...
		siblingSum := sha256.Sum256(sibling.Cert.Raw)
		if _, err := bootstrap(ln.Addr().String(), "--ca-sha256", hex.EncodeToString(siblingSum[:])); err == nil {
			t.Fatal("bootstrap succeeded against the impostor")
		}
		select {
		case <-calls:
		case <-time.After(10 * time.Second):
			t.Fatal("control: a client trusting the sibling never reached the impostor")
		}
		// ...and the printed command works against meshca.
		if stderr, err := bootstrap(m.app.XDS, "--ca-sha256", tok.CASHA256); err != nil {
			t.Fatalf("bootstrap against meshca with the printed pin: %v %s", err, stderr)
		}
	})
}

// TestAdminCredentialsAreNeverMeshcaKeys: an admin identity is never
// served to a node, and a certificate whose key meshca generated never
// opens the admin API, even one a node holds from a store written before
// that rule.
func TestAdminCredentialsAreNeverMeshcaKeys(t *testing.T) {
	m := startMeshIn(t, nil, filepath.Join(t.TempDir(), "data"), withAdminMTLS)
	m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: "ops", Admin: true}, nil, http.StatusCreated)
	m.addIdentity("web")
	m.addIdentity("legacy")
	var e api.Error
	m.admin("POST", api.PathNodes, api.AddNodeRequest{Name: "b", Identities: []string{"web", "ops"}}, &e, http.StatusForbidden)
	if !strings.Contains(e.Error, "admin access") {
		t.Fatalf("node add with an admin identity: %q", e.Error)
	}
	nodeB := m.joined("b", "web")
	m.admin("POST", api.PathNodes+"/b/identities", api.AssignRequest{Identity: "ops"}, &e, http.StatusForbidden)
	t.Logf("node assign of an admin identity: 403 %q", e.Error)
	if _, err := fetchSecret(m, nodeB, "b", "ops"); err == nil {
		t.Fatal("node b received the admin identity's key")
	}

	// A store from before the rule: "legacy" is assigned to node b, which
	// holds its key, and is then marked admin.
	m.admin("POST", api.PathNodes+"/b/identities", api.AssignRequest{Identity: "legacy"}, nil, http.StatusOK)
	// The assignment reaches the xDS server through node configuration,
	// after the API answered.
	var sec *tlsv3.Secret
	var err error
	if !pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
		sec, err = fetchSecret(m, nodeB, "b", "legacy")
		return err == nil
	}) {
		t.Fatal(err)
	}
	served := tlsCert(t, sec)
	m.stop()
	st := testkit.OpenStore(t, m.dir, store.Config{})
	err = st.Update(context.Background(), func(tx *store.Tx) error {
		id, err := tx.Identity("legacy")
		if err != nil {
			return err
		}
		id.Admin = true
		if err := tx.PutIdentity(id); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: "test.legacy", Identity: "legacy", Outcome: store.OutcomeOK})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	st.Close()
	m = startMeshIn(t, nil, m.dir, withAdminMTLS)

	code, err := adminPOST(m, &served, api.PathIdentities, api.AddIdentityRequest{Name: "by-node", Admin: true})
	if err == nil {
		t.Fatalf("a certificate whose key meshca generated and served opened the admin API: %d", code)
	}
	t.Logf("admin POST with the node-held, meshca-generated key: %v", err)
	found := false
	for _, ev := range m.audit() {
		found = found || ev.Action == "admin.auth" && strings.Contains(ev.Detail, "key meshca generated")
	}
	if !found {
		t.Fatal("refusal of a meshca-generated admin key not audited with its reason")
	}
	// Control: a credential from a CSR for the same identity works.
	if code, err := adminPOST(m, m.issueCert("legacy"), api.PathIdentities, api.AddIdentityRequest{Name: "by-csr"}); err != nil || code != http.StatusCreated {
		t.Fatalf("control: CSR credential of legacy: %d %v", code, err)
	}
}

// crlSerials reads the CRL meshca publishes.
func crlSerials(t *testing.T, m *mesh) map[string]bool {
	t.Helper()
	resp, err := m.http.Get("http://" + m.app.Admin + api.PathCRL)
	if err != nil {
		t.Fatal(err)
	}
	return testkit.Revoked(t, readBody(t, resp))
}

// TestNodeRevokeRekeysItsIdentities: the identity keys a revoked node held
// stop working at once: the other holder receives a new key, and the old
// certificate is on the CRL pushed to every node within 2 seconds.
func TestNodeRevokeRekeysItsIdentities(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("shared")
	m.addIdentity("echo")
	nodeD := m.joined("node-d", "shared")
	nodeE := m.joined("node-e", "shared")
	nodeS := m.joined("node-s", "echo")
	holder := subscribe(t, m, "node-e", nodeE, secretName(""), secretName("shared"))
	server := subscribe(t, m, "node-s", nodeS, secretName(""), secretName("echo"))
	first, srvFirst := holder.next(), server.next()
	old := tlsCert(t, first[secretName("shared")])
	echo := tlsCert(t, srvFirst[secretName("echo")])
	// nodeD's copy is the same certificate and key.
	dCopy, err := fetchSecret(m, nodeD, "node-d", "shared")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tlsCert(t, dCopy).Certificate[0], old.Certificate[0]) {
		t.Fatal("the two holders do not share the certificate")
	}
	if err := handshake(t, echo, srvFirst[secretName("")], old, first[secretName("")]); err != nil {
		t.Fatalf("control: the shared certificate before the revoke: %v", err)
	}
	oldSerial := fmt.Sprintf("%x", old.Leaf.SerialNumber)

	start := time.Now()
	var res api.Revoked
	m.admin("POST", api.PathNodes+"/node-d/revoke", api.RevokeRequest{Reason: "stolen"}, &res, http.StatusOK)
	if !slicesContains(res.Serials, oldSerial) {
		t.Fatalf("node revoke did not revoke the shared certificate %s: %v", oldSerial, res.Serials)
	}
	// The remaining holder gets a new key; the server node the CRL.
	var fresh *tlsv3.Secret
	for fresh == nil {
		u := holder.next()
		if s := u[secretName("shared")]; s != nil && !bytes.Equal(tlsCert(t, s).Certificate[0], old.Certificate[0]) {
			fresh = s
		}
	}
	rekeyed := time.Since(start)
	var bundle *tlsv3.Secret
	for bundle == nil || !strings.Contains(string(bundle.GetValidationContext().GetCrl().GetInlineBytes()), "X509 CRL") {
		bundle = server.next()[secretName("")]
	}
	crlAt := time.Since(start)
	t.Logf("node revoke: other holder re-keyed after %s, CRL at the server node after %s", rekeyed, crlAt)
	if rekeyed > 2*time.Second || crlAt > 2*time.Second {
		t.Fatalf("re-key took %s, CRL %s (want within 2s)", rekeyed, crlAt)
	}
	newCert := tlsCert(t, fresh)
	if newCert.PrivateKey.(crypto.Signer).Public().(*ecdsa.PublicKey).Equal(old.PrivateKey.(crypto.Signer).Public()) {
		t.Fatal("the re-keyed certificate has the old key")
	}
	if !crlSerials(t, m)[oldSerial] {
		t.Fatal("the old shared certificate is not on the CRL")
	}
	// As Envoy checks: the revoked node's copy is refused, the new one works.
	if err := handshake(t, echo, bundle, old, bundle); err == nil {
		t.Fatal("the revoked node's copy of the shared certificate still handshakes")
	}
	if err := handshake(t, echo, bundle, newCert, bundle); err != nil {
		t.Fatalf("the re-keyed certificate: %v", err)
	}
}

func slicesContains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// renewWith asks for a new node certificate over mTLS with cert.
func renewWith(m *mesh, cert *tls.Certificate) (*tls.Certificate, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, key, err := renewNode(m.t, ctx, m.dial(cert))
	if err != nil {
		return nil, err
	}
	return testkit.TLSCert(resp.ChainPEM, key)
}

// TestOneValidNodeCertificate: a renewed node certificate revokes the
// previous one on its first use, a re-join revokes all at once, and
// renewals are limited per node across restarts.
func TestOneValidNodeCertificate(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	c1 := m.joined("n", "web")
	serial := func(c *tls.Certificate) string { return fmt.Sprintf("%x", c.Leaf.SerialNumber) }
	// The CRL is signed from the change feed after the commit that revokes,
	// not before the call returns: another node's trust bundle tells when
	// it was stored, as its Envoy learns it.
	bystander := m.joined("bystander", "web")
	bundle := crlWatch{t: t, p: subscribe(t, m, "bystander", bystander, secretName(""))}
	onCRL := func(what string, since time.Time, certs ...*tls.Certificate) {
		t.Helper()
		var want []string
		for _, c := range certs {
			want = append(want, serial(c))
		}
		bundle.until(want...)
		t.Logf("%s: on the CRL pushed to another node %s later", what, time.Since(since).Round(time.Millisecond))
		listed := crlSerials(t, m)
		for _, s := range want {
			if !listed[s] {
				t.Fatalf("%s: serial %s was pushed on the CRL but GET %s does not list it", what, s, api.PathCRL)
			}
		}
	}

	c2, err := renewWith(m, c1)
	if err != nil {
		t.Fatal(err)
	}
	// Until the new certificate is used, the old one still works (the
	// renewal may not have reached the proxy yet).
	if _, err := fetchSecret(m, c1, "n", "web"); err != nil {
		t.Fatalf("the current certificate before its replacement is used: %v", err)
	}
	stolen := subscribe(t, m, "n", c1, secretName("web"))
	stolen.next()
	start := time.Now()
	if _, err := fetchSecret(m, c2, "n", "web"); err != nil {
		t.Fatalf("the renewed certificate: %v", err)
	}
	ended(t, stolen, start, "a stream opened with the superseded certificate")
	if _, err := fetchSecret(m, c1, "n", "web"); err == nil {
		t.Fatal("the previous certificate still authenticates after its replacement was used")
	}
	onCRL("the previous node certificate", start, c1)

	// A re-join revokes every earlier certificate at once.
	c3x, err := renewWith(m, c2) // renewed but never used
	if err != nil {
		t.Fatal(err)
	}
	var tok api.JoinToken
	m.admin("POST", api.PathNodes+"/n/token", struct{}{}, &tok, http.StatusOK)
	inUse := subscribe(t, m, "n", c2, secretName("web"))
	inUse.next()
	start = time.Now()
	c4, err := m.join("n", tok.Token)
	if err != nil {
		t.Fatal(err)
	}
	ended(t, inUse, start, "a stream of the node's certificate before the re-join")
	for name, c := range map[string]*tls.Certificate{"in use": c2, "renewed, unused": c3x} {
		if _, err := fetchSecret(m, c, "n", "web"); err == nil {
			t.Fatalf("the %s certificate still authenticates after a re-join", name)
		}
	}
	onCRL("the in use and the renewed, unused certificates after a re-join", start, c2, c3x)
	if _, err := fetchSecret(m, c4, "n", "web"); err != nil {
		t.Fatalf("the re-joined certificate: %v", err)
	}

	// Renewals: a burst is allowed, then refused with a clear error, also
	// after a restart.
	ok, refused := 0, error(nil)
	for i := 0; i < 10 && refused == nil; i++ {
		if _, err := renewWith(m, c4); err != nil {
			refused = err
		} else {
			ok++
		}
	}
	t.Logf("renewals accepted before the limit: %d (the c1 renewal and the unused one count too)", ok)
	if st, _ := status.FromError(refused); st.Code() != codes.ResourceExhausted || !strings.Contains(st.Message(), "next renewal is allowed at") {
		t.Fatalf("renewal beyond the limit: %v", refused)
	}
	if ok+2 > 3 {
		t.Fatalf("%d renewals accepted in the window, want at most 3", ok+2)
	}
	m = m.restart()
	if _, err := renewWith(m, c4); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("renewal after a restart: %v (the limit must survive it)", err)
	}
}

// ended waits for a stream to end, within 2 seconds of start.
func ended(t *testing.T, p *proxy, start time.Time, what string) {
	t.Helper()
	for {
		select {
		case <-p.updates:
			continue
		case err := <-p.done:
			t.Logf("%s ended %s after its certificate was superseded: %v", what, time.Since(start).Round(time.Millisecond), status.Code(err))
			if d := time.Since(start); d > 2*time.Second {
				t.Fatalf("%s took %s to end", what, d)
			}
			return
		case <-time.After(recvTimeout):
			t.Fatalf("%s is still open %s later", what, recvTimeout)
		}
	}
}

// TestJoinAndRenewRefusalsOfRevokedNodes: an unauthenticated caller gets
// the same answer for an unknown node, a revoked one and a wrong token;
// the audit keeps the reason. A revoked node gets no token, and its renewal
// is refused saying it was revoked.
func TestJoinAndRenewRefusalsOfRevokedNodes(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	m.addNode("alive", "sidecar", "web")
	gone := m.joined("gone", "web")
	m.admin("POST", api.PathNodes+"/gone/revoke", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)

	answers := map[string]string{}
	for _, node := range []string{"alive", "gone", "ghost"} {
		_, err := m.join(node, "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
		st, _ := status.FromError(err)
		answers[node] = st.Code().String() + ": " + strings.ReplaceAll(st.Message(), node, "NODE")
	}
	t.Logf("join answer: %s", answers["alive"])
	if answers["alive"] != answers["gone"] || answers["alive"] != answers["ghost"] || !strings.HasPrefix(answers["alive"], "PermissionDenied") {
		t.Fatalf("join answers differ:\n%v", answers)
	}
	reasons := map[string]string{}
	for _, ev := range m.audit() {
		if ev.Action == "node.join" && ev.Outcome == "denied" {
			reasons[ev.Node] = ev.Detail
		}
	}
	for node, want := range map[string]string{"alive": "not valid", "gone": "is revoked", "ghost": "not registered"} {
		if !strings.Contains(reasons[node], want) {
			t.Fatalf("audit of the refused join of %s: %q (want %q)", node, reasons[node], want)
		}
	}

	var e api.Error
	m.admin("POST", api.PathNodes+"/gone/token", struct{}{}, &e, http.StatusForbidden)
	if !strings.Contains(e.Error, "was revoked") {
		t.Fatalf("node token of a revoked node: %q", e.Error)
	}
	_, err := renewWith(m, gone)
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || !strings.Contains(st.Message(), `node "gone" was revoked`) {
		t.Fatalf("renewal of a revoked node: %v", err)
	}
	t.Logf("renewal of a revoked node: %v", err)
	if _, err := fetchSecret(m, gone, "gone", "web"); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("SDS of a revoked node: %v", err)
	}
}

// TestBootstrapPinAcrossIntermediateRotation: a bootstrap command printed
// before an intermediate rotation still works during it (meshca's server
// certificate stays with the previous CA until it retires), the node
// learns both CAs for its renewals, and node certificates of both CAs
// authenticate.
func TestBootstrapPinAcrossIntermediateRotation(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("web")
	before := m.joined("old-node", "web")
	tok := m.addNode("late", "sidecar", "web")
	resp, err := m.http.Post("http://"+m.app.Admin+api.PathCARotate, "application/json", strings.NewReader(`{"root":false}`))
	if err != nil {
		t.Fatal(err)
	}
	if body := readBody(t, resp); resp.StatusCode != http.StatusOK {
		t.Fatalf("ca rotate: %d %s", resp.StatusCode, body)
	}
	var during api.JoinToken
	m.admin("POST", api.PathNodes+"/late/token", struct{}{}, &during, http.StatusOK)
	if during.CASHA256 != tok.CASHA256 {
		t.Fatalf("during the rotation node token pins %s, before it %s: the server certificate changed CA", during.CASHA256, tok.CASHA256)
	}
	out := filepath.Join(t.TempDir(), "late")
	var stdout, stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := cli.Execute(ctx, cli.Config{Stdout: &stdout, Stderr: &stderr}, []string{"bootstrap", "--server", m.app.XDS, "--node", "late",
		"--token", during.Token, "--ca-sha256", tok.CASHA256, "--out", out}); err != nil {
		t.Fatalf("bootstrap with the pin printed before the rotation: %v %s", err, stderr.String())
	}
	issuers, err := os.ReadFile(filepath.Join(out, "meshca-issuers.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(issuers), "BEGIN CERTIFICATE"); n != 2 {
		t.Fatalf("the node learnt %d issuing CAs during the rotation, want the previous and the new one", n)
	}
	// The node renews against the CAs it learnt, with its new-CA certificate.
	joinedCert, err := tls.LoadX509KeyPair(filepath.Join(out, "node.pem"), filepath.Join(out, "node-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fetchSecret(m, &joinedCert, "late", "web"); err != nil {
		t.Fatalf("the joined certificate: %v", err)
	}
	if err := cli.Execute(ctx, cli.Config{Stdout: &stdout, Stderr: &stderr}, []string{"bootstrap", "renew", "--dir", out}); err != nil {
		t.Fatalf("renew during the rotation: %v %s", err, stderr.String())
	}
	if strings.Contains(stdout.String(), "stays valid") {
		t.Fatalf("renew did not use the renewed certificate: %s", stdout.String())
	}
	// bootstrap renew used the new certificate once: the old one is revoked.
	if _, err := fetchSecret(m, &joinedCert, "late", "web"); err == nil {
		t.Fatal("the node certificate before bootstrap renew still authenticates")
	}
	if _, err := fetchSecret(m, before, "old-node", "web"); err != nil {
		t.Fatalf("a node certificate of the previous CA during the rotation: %v", err)
	}
	// grpc-go's bootstrap channel credentials: crypto/tls with the issuers
	// file as RootCAs and the host name checked.
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(issuers) {
		t.Fatal("meshca-issuers.pem holds no certificate")
	}
	renewed, err := tls.LoadX509KeyPair(filepath.Join(out, "node.pem"), filepath.Join(out, "node-key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(m.app.XDS)
	conn, err := grpc.NewClient(net.JoinHostPort("localhost", port), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
		RootCAs: pool, Certificates: []tls.Certificate{renewed}, MinVersion: tls.VersionTLS13,
	})))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fctx, fcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer fcancel()
	if _, err := secretservice.NewSecretDiscoveryServiceClient(conn).FetchSecrets(fctx, &discovery.DiscoveryRequest{
		Node: &core.Node{Id: "late"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("web")}}); err != nil {
		t.Fatalf("a grpc-go client trusting only meshca-issuers.pem: %v", err)
	}
	t.Logf("during an intermediate rotation: printed pin accepted, %d issuing CAs pinned for renewal", strings.Count(string(issuers), "BEGIN CERTIFICATE"))
}
