package admin_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
)

// TestResponsesCarryNoSecrets drives every admin response that shows a
// node, an identity, a certificate, the audit log or the mesh history
// over HTTP, on a real registry and store, and checks each body for the
// secrets the store holds (join token hashes, the identity's private key)
// and for any JSON field beyond the API's: a storage field that leaked
// into a response fails here.
func TestResponsesCarryNoSecrets(t *testing.T) {
	ctx := context.Background()
	srv, st, reg := newAdminOn(t)
	ts := httptest.NewServer(srv.Handler())
	t.Cleanup(ts.Close)

	var (
		secrets = map[string][]byte{} // what no body may contain
		tokens  []string              // allowed only in the token answers
		checked []string
	)
	addToken := func(tok string) {
		tokens = append(tokens, tok)
		h := sha256.Sum256([]byte(tok))
		secrets["token hash (base64) of "+tok[:4]] = []byte(base64.StdEncoding.EncodeToString(h[:]))
		secrets["token hash (hex) of "+tok[:4]] = []byte(hex.EncodeToString(h[:]))
	}
	// expect calls the API and checks the answer: status, the exact set of
	// JSON fields, and none of the secrets known so far.
	expect := func(method, path, body string, status int, fields string, tokenAllowed bool) []byte {
		t.Helper()
		var rd *strings.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		var a answer
		if rd != nil {
			a = call(t, ts, method, path, rd)
		} else {
			a = call(t, ts, method, path, nil)
		}
		if a.status != status {
			t.Fatalf("%s %s: %d %s", method, path, a.status, a.body)
		}
		for _, bad := range []string{"token_hash", "sealed_key", "PRIVATE KEY", `"key"`, `"hash"`} {
			if bytes.Contains(a.body, []byte(bad)) {
				t.Errorf("%s %s: the answer contains %s: %s", method, path, bad, a.body)
			}
		}
		for what, b := range secrets {
			if bytes.Contains(a.body, b) {
				t.Errorf("%s %s: the answer contains the %s", method, path, what)
			}
		}
		if !tokenAllowed {
			for _, tok := range tokens {
				if bytes.Contains(a.body, []byte(tok)) {
					t.Errorf("%s %s: the answer contains a join token", method, path)
				}
			}
		}
		if fields != "-" {
			if got := jsonFields(t, a.body); got != fields {
				t.Errorf("%s %s: fields\n got %s\nwant %s", method, path, got, fields)
			}
		}
		checked = append(checked, method+" "+path)
		return a.body
	}

	const (
		identityFields = "cert cert.issuer_serial cert.not_after cert.not_before cert.renew_at cert.serial cert.state created_at name spiffe_id state ttl"
		nodeFields     = "connection connection.connected connection.streams created_at identities joined kind name state"
		tokenFields    = "ca_sha256 expires node node.connection node.connection.connected node.connection.streams node.created_at node.identities node.joined node.kind node.name node.state token xds_address"
		eventFields    = "action actor detail identity node outcome seq serial time"
	)
	expect("POST", api.PathIdentities, `{"name":"echo"}`, http.StatusCreated, identityFields, false)
	expect("POST", api.PathIdentities, `{"name":"ops","admin":true}`, http.StatusCreated, "admin "+identityFields, false)
	secrets["private key of echo"] = identityKey(t, st, reg, "echo")

	var tok api.JoinToken
	if err := json.Unmarshal(expect("POST", api.PathMesh, `{"document":`+jsonString(t, meshDoc(t))+`}`, http.StatusCreated, "-", false), new(api.MeshPlan)); err != nil {
		t.Fatal(err)
	}
	body := expect("POST", api.PathNodes, `{"name":"n1","identities":["echo"]}`, http.StatusCreated, tokenFields, true)
	if err := json.Unmarshal(body, &tok); err != nil || tok.Node.Joined {
		t.Fatalf("node add: %v %s", err, body)
	}
	addToken(tok.Token)
	body = expect("POST", api.PathNodes+"/n1/token", `{}`, http.StatusOK, tokenFields, true)
	if err := json.Unmarshal(body, &tok); err != nil {
		t.Fatal(err)
	}
	addToken(tok.Token)
	expect("GET", api.PathNodes+"/n1", "", http.StatusOK, nodeFields, false)
	expect("POST", api.PathNodes+"/n1/identities", `{"identity":"echo"}`, http.StatusOK, nodeFields, false)
	expect("DELETE", api.PathNodes+"/n1/identities/echo", "", http.StatusOK, nodeFields, false)
	expect("POST", api.PathNodes+"/n1/identities", `{"identity":"echo"}`, http.StatusOK, nodeFields, false)

	// The token redeems once; the node shows as joined, and nothing of the
	// token is left to show.
	if _, err := reg.Join(ctx, "n1", tok.Token, csrDER(t), "test"); err != nil {
		t.Fatal(err)
	}
	var n api.Node
	if err := json.Unmarshal(expect("GET", api.PathNodes+"/n1", "", http.StatusOK, nodeFields, false), &n); err != nil || !n.Joined {
		t.Fatalf("node after join: %+v, %v", n, err)
	}
	expect("POST", api.PathNodes, `{"name":"n2"}`, http.StatusCreated, tokenFields, true)
	expect("GET", api.PathNodes, "", http.StatusOK, nodeFields, false)
	expect("GET", api.PathIdentities+"/echo", "", http.StatusOK, identityFields, false)
	expect("GET", api.PathIdentities, "", http.StatusOK, "admin "+identityFields, false)
	expect("GET", api.PathCerts+"/echo", "", http.StatusOK, "chain_pem issuer_serial not_after not_before serial state", false)
	expect("POST", api.PathCerts+"/ops", csrBody(t), http.StatusCreated, "chain_pem issuer_serial not_after not_before serial state", false)
	expect("POST", api.PathReissue+"/echo", `{}`, http.StatusOK, identityFields, false)
	expect("GET", api.PathAudit, "", http.StatusOK, eventFields, false)
	expect("GET", api.PathMesh, "", http.StatusOK, "applied_at applied_by document version", false)
	expect("GET", api.PathMeshHist, "", http.StatusOK, "applied_at applied_by version", false)
	expect("GET", "/", "", http.StatusOK, "-", false)
	t.Logf("%d answers checked for token hashes, join tokens, key bytes and fields beyond the API's", len(checked))
}

// jsonFields lists the field paths of a JSON answer (of every element of
// an array), sorted and space-separated.
func jsonFields(t *testing.T, body []byte) string {
	t.Helper()
	var v any
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatalf("answer is not JSON: %v: %s", err, body)
	}
	seen := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case []any:
			for _, e := range v {
				walk(prefix, e)
			}
		case map[string]any:
			for k, e := range v {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				seen[p] = true
				if _, obj := e.(map[string]any); obj {
					walk(p, e)
				}
			}
		}
	}
	walk("", v)
	out := make([]string, 0, len(seen))
	for k := range seen {
		out = append(out, k)
	}
	sort.Strings(out)
	return strings.Join(slices.Compact(out), " ")
}

func jsonString(t *testing.T, s string) string {
	t.Helper()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func meshDoc(t *testing.T) string {
	t.Helper()
	doc, err := os.ReadFile(filepath.Join("..", "..", "testdata", "mesh", "examples", "http-front-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	return string(doc)
}

func csrDER(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

// identityKey is the start of the base64 of the private key the store
// holds for an identity's current certificate: what a leak of the key,
// as JSON bytes or PEM, would contain.
func identityKey(t *testing.T, st *store.Store, reg *registry.Registry, name string) []byte {
	t.Helper()
	s, err := reg.Identity(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	var key []byte
	if err := st.View(context.Background(), func(tx *store.Tx) error {
		c, err := tx.Credential(s.Identity.CurrentSerial)
		key = c.Key
		return err
	}); err != nil || len(key) == 0 {
		t.Fatalf("key of %s: %v", name, err)
	}
	return []byte(base64.StdEncoding.EncodeToString(key)[:40])
}
