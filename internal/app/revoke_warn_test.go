package app_test

import (
	"net/http"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
)

const frontMesh = `version: 1
services:
  - name: echo
    endpoints: [{address: 127.0.0.1, port: 8081}]
routes:
  - name: web
    domains: ["*"]
    rules:
      - match: {prefix: /}
        service: echo
front_proxy:
  identity: front
  https: {port: 8443, route: web}
  http: {port: 8080, redirect_to_https: permanent_redirect}
`

// Taking the front proxy's identity away is refused when unassigning; a
// revocation (an emergency) goes through but says which node it leaves
// without a certificate. An identity nothing needs is revoked quietly.
func TestRevokeWarnsAboutFrontProxyIdentity(t *testing.T) {
	m := startMesh(t, nil)
	m.mustCLI("identity", "add", "front", "--dns", "localhost")
	m.mustCLI("identity", "add", "spare")
	m.addNode("edge-1", "front-proxy", "front", "spare")
	m.admin("POST", api.PathMesh, api.ApplyMeshRequest{Document: frontMesh}, nil, http.StatusCreated)

	_, stderr, err := m.cli("node", "unassign", "edge-1", "--identity", "front")
	if err == nil || !strings.Contains(stderr, "cannot configure node") {
		t.Fatalf("unassign of the front identity: err %v, stderr %q", err, stderr)
	}
	out, stderr, err := m.cli("identity", "revoke", "spare")
	if err != nil || strings.Contains(stderr, "warning") {
		t.Fatalf("revoke of an identity no listener needs: err %v, stderr %q, out %q", err, stderr, out)
	}
	out, stderr, err = m.cli("identity", "revoke", "front", "--reason", "key compromise")
	if err != nil || !strings.Contains(out, "revoked front") {
		t.Fatalf("revoke front: err %v, stderr %q", err, stderr)
	}
	for _, want := range []string{"warning: node edge-1 (front-proxy) needs it", "assign the node another identity"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("revoke front: stderr lacks %q:\n%s", want, stderr)
		}
	}
	t.Logf("%s", strings.TrimSpace(stderr))
}

// The reason given to revoke reaches the CRL as a reason code; revoking
// twice says so in plain words.
func TestRevokeReasonOnCRLAndWording(t *testing.T) {
	m := startMesh(t, nil)
	m.mustCLI("identity", "add", "web")
	m.mustCLI("identity", "add", "api")
	m.mustCLI("identity", "revoke", "web", "--reason", "key compromise: laptop lost")
	m.mustCLI("identity", "revoke", "api", "--reason", "moved to another team")
	var web, api_ api.Identity
	m.admin("GET", api.PathIdentities+"/web", nil, &web, http.StatusOK)
	m.admin("GET", api.PathIdentities+"/api", nil, &api_, http.StatusOK)
	resp, err := m.http.Get("http://" + m.app.Admin + api.PathCRL)
	if err != nil {
		t.Fatal(err)
	}
	codes := map[string]int{}
	for _, crl := range testkit.ParseCRLs(t, readBody(t, resp)) {
		for _, e := range crl.RevokedCertificateEntries {
			codes[e.SerialNumber.Text(16)] = e.ReasonCode
		}
	}
	if c, ok := codes[web.Cert.Serial]; !ok || c != 1 {
		t.Errorf("web's CRL entry: present %v, reason code %d (want keyCompromise, 1)", ok, c)
	}
	if c, ok := codes[api_.Cert.Serial]; !ok || c != 0 {
		t.Errorf("api's CRL entry: present %v, reason code %d (want none)", ok, c)
	}
	_, stderr, err := m.cli("identity", "revoke", "web")
	if err == nil || !strings.Contains(stderr, `identity "web" is already revoked; nothing to do`) || strings.Contains(stderr, "already exists") {
		t.Fatalf("second revoke: err %v, stderr %q", err, stderr)
	}
}
