package admin_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// noConnections is an xDS server that has seen no node.
type noConnections struct{}

func (noConnections) NodeConnection(string) api.NodeConnection { return api.NodeConnection{} }

func newServer(t *testing.T) *httptest.Server {
	t.Helper()
	ts := httptest.NewServer(newAdmin(t).Handler())
	t.Cleanup(ts.Close)
	return ts
}

// newAdmin builds the admin server on a real registry in a temp store.
func newAdmin(t *testing.T) *admin.Server {
	t.Helper()
	srv, _, _ := newAdminOn(t)
	return srv
}

// newAdminOn is newAdmin, also returning the store and registry behind it.
func newAdminOn(t *testing.T) (*admin.Server, *store.Store, *registry.Registry) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "data")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	sealer, err := seal.LoadOrCreate(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: dir, Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	td, _ := identity.TrustDomain("mesh.local")
	clk := clock.NewFake(time.Now())
	auth, err := authority.New(context.Background(), authority.Config{Store: st, TrustDomain: td, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(context.Background(), registry.Config{Store: st, TrustDomain: td, Issuer: auth, Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Identities: reg, CSRSigner: reg, Nodes: reg, Reissuer: reg, Revoker: reg, CRLs: auth, Meshes: reg, Connections: noConnections{}, Authority: auth, Audit: reg, TrustDomain: "mesh.local"})
	if err != nil {
		t.Fatal(err)
	}
	return srv, st, reg
}

type answer struct {
	status int
	body   []byte
}

func call(t *testing.T, ts *httptest.Server, method, path string, body io.Reader) answer {
	t.Helper()
	req, err := http.NewRequest(method, ts.URL+path, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := ts.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if bytes.Contains(b, []byte("PRIVATE KEY")) {
		t.Fatalf("%s %s answered with key material", method, path)
	}
	return answer{resp.StatusCode, b}
}

func TestIdentityLifecycle(t *testing.T) {
	ts := newServer(t)
	a := call(t, ts, "POST", api.PathIdentities, strings.NewReader(`{"name":"ns/prod/echo","dns_names":["echo.mesh.local"],"ttl":"30m"}`))
	if a.status != http.StatusCreated {
		t.Fatalf("add: %d %s", a.status, a.body)
	}
	var id api.Identity
	if err := json.Unmarshal(a.body, &id); err != nil {
		t.Fatal(err)
	}
	if id.SPIFFEID != "spiffe://mesh.local/ns/prod/echo" || id.Cert == nil || id.TTL != "30m0s" {
		t.Fatalf("identity = %+v", id)
	}

	a = call(t, ts, "GET", api.PathIdentities+"/ns/prod/echo", nil)
	var shown api.Identity
	if a.status != 200 || json.Unmarshal(a.body, &shown) != nil || shown.Cert.Serial != id.Cert.Serial {
		t.Fatalf("show: %d %s", a.status, a.body)
	}

	a = call(t, ts, "GET", api.PathCerts+"/ns/prod/echo", nil)
	var cert api.Cert
	if a.status != 200 || json.Unmarshal(a.body, &cert) != nil {
		t.Fatalf("cert: %d %s", a.status, a.body)
	}
	block, rest := pem.Decode([]byte(cert.ChainPEM))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil || leaf.URIs[0].String() != id.SPIFFEID {
		t.Fatalf("leaf: %v", err)
	}
	if inter, _ := pem.Decode(rest); inter == nil {
		t.Fatal("chain lacks the intermediate")
	}

	a = call(t, ts, "GET", api.PathIdentities, nil)
	var list []api.Identity
	if a.status != 200 || json.Unmarshal(a.body, &list) != nil || len(list) != 1 {
		t.Fatalf("list: %d %s", a.status, a.body)
	}

	a = call(t, ts, "GET", api.PathCABundle, nil)
	if b, _ := pem.Decode(a.body); a.status != 200 || b == nil || b.Type != "CERTIFICATE" {
		t.Fatalf("bundle: %d %q", a.status, a.body)
	}
	a = call(t, ts, "GET", api.PathCA, nil)
	var caInfo api.CA
	if a.status != 200 || json.Unmarshal(a.body, &caInfo) != nil || caInfo.Issuer.Serial == "" || len(caInfo.Roots) != 1 {
		t.Fatalf("ca: %d %s", a.status, a.body)
	}

	a = call(t, ts, "GET", api.PathAudit+"?after=1&limit=1", nil)
	var evs []api.AuditEvent
	if a.status != 200 || json.Unmarshal(a.body, &evs) != nil || len(evs) != 1 || evs[0].Seq != 2 {
		t.Fatalf("audit page: %d %s", a.status, a.body)
	}
}

func csrBody(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{DNSNames: []string{"evil.example"}}, key)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := json.Marshal(api.IssueCertRequest{CSRPEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))})
	return string(b)
}

func TestIssueFromCSR(t *testing.T) {
	ts := newServer(t)
	if a := call(t, ts, "POST", api.PathIdentities, strings.NewReader(`{"name":"ops","admin":true}`)); a.status != http.StatusCreated {
		t.Fatalf("add: %d %s", a.status, a.body)
	}
	a := call(t, ts, "POST", api.PathCerts+"/ops", strings.NewReader(csrBody(t)))
	var c api.Cert
	if a.status != http.StatusCreated || json.Unmarshal(a.body, &c) != nil {
		t.Fatalf("issue: %d %s", a.status, a.body)
	}
	block, _ := pem.Decode([]byte(c.ChainPEM))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	// The CSR asked for a DNS name; only the identity's SANs are issued.
	if len(leaf.DNSNames) != 0 || len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://mesh.local/ops" {
		t.Fatalf("SANs: dns=%v uris=%v", leaf.DNSNames, leaf.URIs)
	}
	// The identity's current (SDS) certificate is unchanged.
	var id api.Identity
	if a := call(t, ts, "GET", api.PathIdentities+"/ops", nil); json.Unmarshal(a.body, &id) != nil || id.Cert.Serial == c.Serial {
		t.Fatalf("current certificate replaced by the CSR one: %s", a.body)
	}
}

func TestErrorsMapToStatus(t *testing.T) {
	ts := newServer(t)
	if a := call(t, ts, "POST", api.PathIdentities, strings.NewReader(`{"name":"echo"}`)); a.status != http.StatusCreated {
		t.Fatalf("add: %d %s", a.status, a.body)
	}
	big := `{"name":"` + strings.Repeat("a", 2<<20) + `"}`
	tests := []struct {
		name   string
		method string
		path   string
		body   string
		status int
		code   string
		msg    string
	}{
		{"duplicate", "POST", api.PathIdentities, `{"name":"echo"}`, 409, api.CodeConflict, "already exists"},
		{"bad name", "POST", api.PathIdentities, `{"name":"../x"}`, 400, api.CodeInvalid, "invalid identity name"},
		{"foreign id", "POST", api.PathIdentities, `{"name":"spiffe://evil/x"}`, 400, api.CodeInvalid, "without spiffe://"},
		{"bad ttl", "POST", api.PathIdentities, `{"name":"x","ttl":"forever"}`, 400, api.CodeInvalid, "not a duration"},
		{"ttl range", "POST", api.PathIdentities, `{"name":"x","ttl":"1m"}`, 400, api.CodeInvalid, "out of range"},
		{"unknown field", "POST", api.PathIdentities, `{"name":"x","not_after":"2099-01-01T00:00:00Z"}`, 400, api.CodeInvalid, "unknown field"},
		{"not json", "POST", api.PathIdentities, `name=x`, 400, api.CodeInvalid, "JSON"},
		{"trailing", "POST", api.PathIdentities, `{"name":"x"}{}`, 400, api.CodeInvalid, "trailing"},
		{"too large", "POST", api.PathIdentities, big, 413, api.CodeTooLarge, "1 MiB"},
		{"unknown identity", "GET", api.PathIdentities + "/nobody", "", 404, api.CodeNotFound, "not found"},
		{"unknown cert", "GET", api.PathCerts + "/nobody", "", 404, api.CodeNotFound, "not found"},
		{"bad after", "GET", api.PathAudit + "?after=-1", "", 400, api.CodeInvalid, "after"},
		{"csr not pem", "POST", api.PathCerts + "/echo", `{"csr_pem":"garbage"}`, 400, api.CodeInvalid, "CERTIFICATE REQUEST"},
		{"csr bad der", "POST", api.PathCerts + "/echo", `{"csr_pem":"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"}`, 400, api.CodeInvalid, ""},
		{"csr unknown identity", "POST", api.PathCerts + "/nobody", csrBody(t), 404, api.CodeNotFound, "not found"},
		{"bad import", "POST", api.PathCAImport, `{"cert_pem":"garbage","key_pem":"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"}`, 400, api.CodeInvalid, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var body io.Reader
			if tt.body != "" {
				body = strings.NewReader(tt.body)
			}
			a := call(t, ts, tt.method, tt.path, body)
			var e api.Error
			if err := json.Unmarshal(a.body, &e); err != nil {
				t.Fatalf("body %q: %v", a.body, err)
			}
			if a.status != tt.status || e.Code != tt.code || !strings.Contains(e.Error, tt.msg) {
				t.Fatalf("got %d %+v, want %d %s containing %q", a.status, e, tt.status, tt.code, tt.msg)
			}
			if len(e.Error) > 600 {
				t.Fatalf("error message of %d bytes echoes hostile input", len(e.Error))
			}
		})
	}
	// Nothing but echo was issued.
	var list []api.Identity
	if a := call(t, ts, "GET", api.PathIdentities, nil); json.Unmarshal(a.body, &list) != nil || len(list) != 1 {
		t.Fatalf("identities after refusals: %s", a.body)
	}
}
