package app_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// hostileCSR builds a PEM CSR signed by key with the given template.
func hostileCSR(t *testing.T, key crypto.Signer, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})
}

// hostileCSRs are the crafted certificate requests shared by the admin and
// join tables.
type hostileCSRs struct {
	badSig, bigRSA, caTrue, sans1000, otherID, foreignID, wrongType []byte
	bigRSABits                                                      int
}

func makeHostileCSRs(t *testing.T, otherID, foreignID string) hostileCSRs {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	var h hostileCSRs

	// A valid CSR whose signature is then broken (last byte of the DER,
	// which is inside the signature BIT STRING).
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	der[len(der)-1] ^= 0xff
	h.badSig = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})

	// An oversized RSA key. RSA-16384 with two primes takes minutes to
	// generate here and even 8192 bits takes ~6 s, so the key is a
	// multi-prime one (same modulus size, far quicker). Short runs use 8192
	// bits (meshca's limit is 4096); MESHCA_SOAK=1 uses 16384.
	h.bigRSABits = 8192
	if testkit.Soak() {
		h.bigRSABits = 16384
	}
	start := time.Now()
	//lint:ignore SA1019 multi-prime only to make an oversized test key fast
	rsaKey, err := rsa.GenerateMultiPrimeKey(rand.Reader, h.bigRSABits/2048, h.bigRSABits) //nolint:staticcheck
	if err != nil {
		t.Fatalf("RSA-%d: %v", h.bigRSABits, err)
	}
	h.bigRSA = hostileCSR(t, rsaKey, &x509.CertificateRequest{})
	t.Logf("RSA-%d CSR (%d primes) built in %s", h.bigRSABits, h.bigRSABits/2048, time.Since(start).Round(time.Millisecond))

	// basicConstraints CA:TRUE, pathlen unset, as a requested extension.
	bc, _ := asn1.Marshal(struct {
		IsCA bool `asn1:"optional"`
	}{true})
	h.caTrue = hostileCSR(t, key, &x509.CertificateRequest{
		Subject:         pkix.Name{CommonName: "root-of-all-evil"},
		ExtraExtensions: []pkix.Extension{{Id: asn1.ObjectIdentifier{2, 5, 29, 19}, Critical: true, Value: bc}},
	})

	dns := make([]string, 1000)
	for i := range dns {
		dns[i] = fmt.Sprintf("h%04d.evil.example", i)
	}
	h.sans1000 = hostileCSR(t, key, &x509.CertificateRequest{DNSNames: dns, EmailAddresses: []string{"root@evil.example"}})

	u, _ := url.Parse(otherID)
	h.otherID = hostileCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{u}, Subject: pkix.Name{CommonName: "other"}})
	f, _ := url.Parse(foreignID)
	h.foreignID = hostileCSR(t, key, &x509.CertificateRequest{URIs: []*url.URL{f}})

	// A certificate where a CSR is expected.
	cder, _ := x509.CreateCertificate(rand.Reader, &x509.Certificate{SerialNumber: bigOne(), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)},
		&x509.Certificate{SerialNumber: bigOne()}, key.Public(), key)
	h.wrongType = testkit.CertPEM(cder)
	return h
}

// hostileHTTP sends a raw body and returns status, decoded error and body.
func hostileHTTP(t *testing.T, m *mesh, method, path string, body []byte) (int, api.Error, []byte) {
	t.Helper()
	req, _ := http.NewRequest(method, "http://"+m.app.Admin+path, bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := m.http.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v (server crashed or cut the connection?)", method, clipStr(path, 60), err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	var e api.Error
	_ = json.Unmarshal(data, &e)
	return resp.StatusCode, e, data
}

func clipStr(s string, n int) string {
	if len(s) > n {
		return s[:n] + "..."
	}
	return s
}

func jsonBody(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return b
}

// issuedState is what "nothing issued" is measured against: the current
// serial of every identity (GET /v1/identities) and the number of ok audit
// serials in ok audit records (every certificate meshca stores is audited
// with its serial, including CSR certificates and node certificates).
type issuedState struct {
	current map[string]string
	okCerts int
	denied  int
}

func (m *mesh) issuedState() issuedState {
	var ids []api.Identity
	m.admin("GET", api.PathIdentities, nil, &ids, http.StatusOK)
	s := issuedState{current: map[string]string{}}
	serials := map[string]bool{}
	for _, id := range ids {
		if id.Cert != nil {
			s.current[id.Name] = id.Cert.Serial
		}
	}
	for _, e := range m.audit() {
		switch {
		case e.Outcome == "ok" && e.Serial != "" && !strings.HasPrefix(e.Action, "ca.") && e.Identity != "meshca":
			// meshca's own xDS server certificate is issued lazily at the
			// first handshake: not a client's doing.
			serials[e.Serial] = true
		case e.Outcome == "denied":
			s.denied++
		}
	}
	s.okCerts = len(serials)
	return s
}

func sameCurrent(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

// checkLeaf asserts a certificate meshca issued for a hostile-but-valid CSR
// carries only meshca's choices: one URI SAN (want), no DNS/IP/email SANs
// beyond wantDNS, not a CA, validity from the profile.
func checkLeaf(t *testing.T, what, chainPEM, want string, maxTTL time.Duration) {
	t.Helper()
	b, _ := pem.Decode([]byte(chainPEM))
	if b == nil {
		t.Fatalf("%s: no certificate in the answer", what)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if c.IsCA || c.BasicConstraintsValid && c.IsCA || c.KeyUsage&x509.KeyUsageCertSign != 0 {
		t.Errorf("%s: issued a CA certificate", what)
	}
	if len(c.URIs) != 1 || c.URIs[0].String() != want {
		t.Errorf("%s: URIs %v, want only %s", what, c.URIs, want)
	}
	if len(c.DNSNames)+len(c.IPAddresses)+len(c.EmailAddresses) != 0 {
		t.Errorf("%s: extra SANs dns=%d ip=%d email=%d", what, len(c.DNSNames), len(c.IPAddresses), len(c.EmailAddresses))
	}
	if c.Subject.CommonName == "root-of-all-evil" || c.Subject.CommonName == "other" {
		t.Errorf("%s: subject taken from the CSR: %s", what, c.Subject)
	}
	if d := c.NotAfter.Sub(c.NotBefore); d > maxTTL+2*time.Minute {
		t.Errorf("%s: validity %s longer than the profile's %s", what, d, maxTTL)
	}
}

func TestHostileInputs(t *testing.T) {
	testkit.Rand(t) // inputs are fixed; the seed is logged for uniformity
	m := startMesh(t, nil)
	m.addIdentity("web")
	m.addIdentity("other")
	csrs := makeHostileCSRs(t, "spiffe://mesh.local/other", "spiffe://evil.example/web")
	csrBody := func(p []byte) []byte { return jsonBody(api.IssueCertRequest{CSRPEM: string(p)}) }
	long := strings.Repeat("a", 2100)
	longPath := strings.Repeat("a/", 1100)
	many := make([]string, 1000)
	for i := range many {
		many[i] = fmt.Sprintf("d%04d.example.com", i)
	}
	hugeMesh := jsonBody(api.ApplyMeshRequest{Document: strings.Repeat("# pad\n", (2<<20)/6)})

	type refusal struct {
		name, method, path string
		body               []byte
		status             int  // expected status; 0 means any 4xx
		audited            bool // the refusal must leave a denied audit record
	}
	refusals := []refusal{
		{"csr garbage PEM", "POST", api.PathCerts + "/web", csrBody([]byte("hello, not PEM")), 400, false},
		{"csr wrong PEM type", "POST", api.PathCerts + "/web", csrBody(csrs.wrongType), 400, false},
		{"csr two blocks", "POST", api.PathCerts + "/web", csrBody(append(append([]byte{}, csrs.caTrue...), csrs.caTrue...)), 400, false},
		{"csr bad signature", "POST", api.PathCerts + "/web", csrBody(csrs.badSig), 400, true},
		{fmt.Sprintf("csr RSA-%d", csrs.bigRSABits), "POST", api.PathCerts + "/web", csrBody(csrs.bigRSA), 400, true},
		{"csr + client not_after", "POST", api.PathCerts + "/web", []byte(`{"csr_pem":` + string(jsonBody(string(csrs.caTrue))) + `,"not_after":"2099-01-01T00:00:00Z"}`), 400, false},
		{"csr + client not_before", "POST", api.PathCerts + "/web", []byte(`{"csr_pem":"x","not_before":"2000-01-01T00:00:00Z"}`), 400, false},
		{"csr for unknown identity", "POST", api.PathCerts + "/nobody", csrBody(csrs.caTrue), 404, true},
		{"csr for >2KiB name", "POST", api.PathCerts + "/" + long, csrBody(csrs.caTrue), 0, true},
		{"identity + client not_after", "POST", api.PathIdentities, []byte(`{"name":"v1","not_after":"2099-01-01T00:00:00Z"}`), 400, false},
		{"identity + ttl 20y", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "v2", TTL: "175200h"}), 400, true},
		{"identity + ttl 1s", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "v3", TTL: "1s"}), 400, true},
		{"identity name >2KiB", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: long}), 400, true},
		{"identity path >2KiB", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: longPath}), 400, true},
		{"identity foreign TD", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "spiffe://evil.example/web"}), 400, true},
		{"identity own TD as URI", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "spiffe://mesh.local/web2"}), 400, true},
		{"identity dot-dot", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "web/../admin"}), 400, true},
		{"identity node/ prefix", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "node/n1"}), 400, true},
		{"identity 1000 dns", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "many", DNSNames: many}), 400, true},
		{"identity dns bare wildcard", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "wild", DNSNames: []string{"*.com"}}), 400, true},
		{"identity dns 2 wildcards", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "wild", DNSNames: []string{"*.*.example.com"}}), 400, true},
		{"identity dns uppercase", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "upper", DNSNames: []string{"Example.COM"}}), 400, true},
		{"identity dns 300 chars", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "longdns", DNSNames: []string{strings.Repeat("a.", 150) + "com"}}), 400, true},
		{"identity dns with URI", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "urid", DNSNames: []string{"spiffe://mesh.local/other"}}), 400, true},
		{"identity dns IP", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "ipd", DNSNames: []string{"10.0.0.1"}}), 400, true},
		{"identity existing", "POST", api.PathIdentities, jsonBody(api.AddIdentityRequest{Name: "web"}), 409, true},
		{"body not JSON", "POST", api.PathIdentities, []byte("name=web"), 400, false},
		{"body trailing data", "POST", api.PathIdentities, []byte(`{"name":"t1"}{"name":"t2"}`), 400, false},
		{"body > 1 MiB", "POST", api.PathIdentities, []byte(`{"name":"` + strings.Repeat("a", 1<<20+10) + `"}`), 413, false},
		{"ca import garbage", "POST", api.PathCAImport, jsonBody(api.ImportCARequest{CertPEM: "garbage", KeyPEM: "garbage"}), 0, true},
		{"ca import leaf as CA", "POST", api.PathCAImport, jsonBody(api.ImportCARequest{CertPEM: string(csrs.wrongType), KeyPEM: "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}), 0, true},
		{"ca import + extra field", "POST", api.PathCAImport, []byte(`{"cert_pem":"x","key_pem":"y","not_after":"2099-01-01T00:00:00Z"}`), 400, false},
		{"mesh garbage YAML", "POST", api.PathMesh, jsonBody(api.ApplyMeshRequest{Document: "{{{: ]]"}), 400, false},
		{"mesh unknown field", "POST", api.PathMesh, jsonBody(api.ApplyMeshRequest{Document: "version: 1\nevil: true\n"}), 400, false},
		{"mesh > 1 MiB", "POST", api.PathMesh, hugeMesh, 413, false},
	}

	before := m.issuedState()
	var tried, auditedN int
	for _, c := range refusals {
		tried++
		d0 := m.issuedState().denied
		st, e, raw := hostileHTTP(t, m, c.method, c.path, c.body)
		d1 := m.issuedState().denied
		if st < 400 || st >= 500 || (c.status != 0 && st != c.status) {
			t.Errorf("%s: status %d (want %d/4xx): %s", c.name, st, c.status, clipStr(string(raw), 200))
			continue
		}
		if e.Error == "" || e.Code == "" {
			t.Errorf("%s: status %d without a JSON error: %s", c.name, st, clipStr(string(raw), 200))
		}
		if strings.Contains(string(raw), "PRIVATE KEY") || len(raw) > 4096 {
			t.Errorf("%s: error body leaks input (%d bytes): %s", c.name, len(raw), clipStr(string(raw), 200))
		}
		if d1 > d0 {
			auditedN++
		}
		if c.audited && d1 == d0 {
			t.Errorf("%s: refused (%d %s) but no denied audit record", c.name, st, e.Code)
		}
		t.Logf("admin %-28s -> %d %-9s audited=%-5t %s", c.name, st, e.Code, d1 > d0, clipStr(e.Error, 110))
	}
	after := m.issuedState()
	if !sameCurrent(before.current, after.current) || after.okCerts != before.okCerts {
		t.Errorf("refusals issued something: current %v -> %v, ok cert records %d -> %d", before.current, after.current, before.okCerts, after.okCerts)
	}

	// Valid CSRs with hostile contents: issued, but only with meshca's
	// subject, SANs and validity; one certificate each.
	type sanitized struct {
		name string
		csr  []byte
	}
	sanitize := []sanitized{
		{"csr CA:TRUE", csrs.caTrue},
		{"csr 1000 SANs + email", csrs.sans1000},
		{"csr other identity's SPIFFE ID", csrs.otherID},
		{"csr foreign SPIFFE ID", csrs.foreignID},
	}
	for _, c := range sanitize {
		tried++
		s0 := m.issuedState()
		var out api.Cert
		m.admin("POST", api.PathCerts+"/web", api.IssueCertRequest{CSRPEM: string(c.csr)}, &out, http.StatusCreated)
		checkLeaf(t, "admin "+c.name, out.ChainPEM, "spiffe://mesh.local/web", time.Hour)
		s1 := m.issuedState()
		if s1.okCerts != s0.okCerts+1 || !sameCurrent(s0.current, s1.current) {
			t.Errorf("%s: ok cert records %d -> %d, current changed=%t (want +1, unchanged)", c.name, s0.okCerts, s1.okCerts, !sameCurrent(s0.current, s1.current))
		}
		t.Logf("admin %-28s -> 201 sanitized leaf (serial %s)", c.name, out.Serial)
	}

	// The node join service, with the same crafted CSRs.
	tok := m.addNode("n1", "sidecar", "web")
	conn := m.dial(nil)
	invoke := func(req any) (*nodeapi.JoinResponse, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		var resp nodeapi.JoinResponse
		err := conn.Invoke(ctx, nodeapi.FullJoinMethod, req, &resp, grpc.ForceCodec(nodeapi.Codec{}))
		return &resp, err
	}
	joinReq := func(node, token string, csr []byte) nodeapi.JoinRequest {
		return nodeapi.JoinRequest{Node: node, Token: token, CSRPEM: string(csr)}
	}
	type joinRefusal struct {
		name    string
		req     any
		codes   []codes.Code
		audited bool
	}
	joinRefusals := []joinRefusal{
		{"join garbage PEM", joinReq("n1", tok.Token, []byte("garbage")), []codes.Code{codes.InvalidArgument}, false},
		{"join wrong PEM type", joinReq("n1", tok.Token, csrs.wrongType), []codes.Code{codes.InvalidArgument}, false},
		{"join bad signature", joinReq("n1", tok.Token, csrs.badSig), []codes.Code{codes.InvalidArgument}, true},
		{fmt.Sprintf("join RSA-%d", csrs.bigRSABits), joinReq("n1", tok.Token, csrs.bigRSA), []codes.Code{codes.InvalidArgument}, true},
		{"join wrong token", joinReq("n1", "not-the-token", csrs.caTrue), []codes.Code{codes.PermissionDenied}, true},
		{"join node name >2KiB", joinReq(long, tok.Token, csrs.caTrue), []codes.Code{codes.InvalidArgument, codes.PermissionDenied}, true},
		{"join foreign TD node", joinReq("spiffe://evil.example/n1", tok.Token, csrs.caTrue), []codes.Code{codes.InvalidArgument, codes.PermissionDenied}, true},
		{"join unknown node", joinReq("n9", tok.Token, csrs.caTrue), []codes.Code{codes.PermissionDenied, codes.InvalidArgument}, true},
		// Finding: grpc-go 1.85 turns the codec's decode error into
		// codes.Internal before xds/join.go's InvalidArgument mapping runs.
		{"join not JSON", json.RawMessage(`"just a string"`), []codes.Code{codes.InvalidArgument, codes.Internal}, false},
		// The join codec refuses unknown fields, so a client-chosen validity
		// fails at decoding, which grpc-go reports as Internal (see above).
		{"join + client not_after", json.RawMessage(`{"node":"n1","token":"x","csr_pem":"x","not_after":"2099-01-01T00:00:00Z"}`), []codes.Code{codes.InvalidArgument, codes.Internal}, false},
	}
	jb := m.issuedState()
	for _, c := range joinRefusals {
		tried++
		d0 := m.issuedState().denied
		_, err := invoke(c.req)
		d1 := m.issuedState().denied
		st, _ := status.FromError(err)
		okCode := false
		for _, want := range c.codes {
			okCode = okCode || st.Code() == want
		}
		if err == nil || !okCode || st.Message() == "" {
			t.Errorf("%s: err %v, want one of %v with a message", c.name, err, c.codes)
			continue
		}
		if c.audited && d1 == d0 {
			t.Errorf("%s: refused (%s) but no denied audit record", c.name, st.Code())
		}
		if d1 > d0 {
			auditedN++
		}
		t.Logf("join  %-28s -> %-16s audited=%-5t %s", c.name, st.Code(), d1 > d0, clipStr(st.Message(), 110))
	}
	ja := m.issuedState()
	if ja.okCerts != jb.okCerts {
		t.Errorf("join refusals issued %d certificates", ja.okCerts-jb.okCerts)
	}
	// The token survived every refusal: a real join with it still works.
	if _, err := m.join("n1", tok.Token); err != nil {
		t.Errorf("join with the untouched token after refusals: %v", err)
	}

	// Hostile-but-valid join CSRs: one fresh node each.
	for i, c := range sanitize {
		tried++
		node := fmt.Sprintf("s%d", i)
		ntok := m.addNode(node, "sidecar")
		s0 := m.issuedState()
		resp, err := invoke(joinReq(node, ntok.Token, c.csr))
		if err != nil {
			t.Errorf("join %s: %v", c.name, err)
			continue
		}
		checkLeaf(t, "join "+c.name, resp.ChainPEM, "spiffe://mesh.local/node/"+node, 25*time.Hour)
		if s1 := m.issuedState(); s1.okCerts != s0.okCerts+1 {
			t.Errorf("join %s: ok cert records %d -> %d", c.name, s0.okCerts, s1.okCerts)
		}
		t.Logf("join  %-28s -> OK sanitized node leaf (serial %s)", c.name, resp.Serial)
	}

	m.admin("GET", "/healthz", nil, nil, http.StatusOK)
	t.Logf("hostile inputs tried %d (admin refusals %d, join refusals %d, sanitized %d); refusals audited %d; issued by refusals 0",
		tried, len(refusals), len(joinRefusals), 2*len(sanitize), auditedN)
}

func bigOne() *big.Int { return big.NewInt(1) }
