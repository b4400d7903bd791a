package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/x509"
	"encoding/pem"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/agentfiles"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/rotation"
)

func idName(identity string) string { return "spiffe://" + trustDomain + "/" + identity }

var bundleName = "spiffe://" + trustDomain

func secretsOf(t *testing.T, rs []*anypb.Any) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, r := range rs {
		s := new(tlsv3.Secret)
		if err := r.UnmarshalTo(s); err != nil {
			t.Fatalf("resource %s is not a secret: %v", r.GetTypeUrl(), err)
		}
		out[s.GetName()] = s
	}
	return out
}

// leafOf parses the certificate of a TLS secret and checks that its key is
// the one beside it.
func leafOf(t *testing.T, s *tlsv3.Secret) *x509.Certificate {
	t.Helper()
	tc := s.GetTlsCertificate()
	leaf := testkit.ParseCertPEM(t, tc.GetCertificateChain().GetInlineBytes())
	block, _ := pem.Decode(tc.GetPrivateKey().GetInlineBytes())
	if block == nil {
		t.Fatalf("secret %s has no key", s.GetName())
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatalf("secret %s: key: %v", s.GetName(), err)
	}
	if !key.(*ecdsa.PrivateKey).PublicKey.Equal(leaf.PublicKey) {
		t.Fatalf("secret %s: the key does not match the certificate", s.GetName())
	}
	return leaf
}

func serial(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// TestAgentServesNodeSecretsOverSDS runs an agent against a real meshca and
// reads its Unix socket as Envoy does: a certificate per identity for a key
// made by the agent, exactly the node's secrets (SotW, delta and fetch),
// rotation at the renewal point, a revocation of another holder on the CRL
// within 2 s, and meshca unreachable then back. meshca's store never holds
// the agent's keys.
func TestAgentServesNodeSecretsOverSDS(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMeshca(t, clk)
	for _, id := range []string{"web", "api", "other"} {
		m.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id}, nil, http.StatusCreated)
	}
	cert := m.addAgentNode("agent-1", "web", "api")
	proxy := testkit.StartProxy(t, m.app.XDS)
	conn := m.dial(proxy.Addr, cert)

	dir := t.TempDir()
	socket := filepath.Join(dir, "run", "sds.sock")
	files := filepath.Join(dir, "files")
	logs := newLogRecorder(t)
	a := startAgent(t, agent.Config{Conn: conn, Node: "agent-1", TrustDomain: td, SDSSocket: socket, FilesDir: files,
		Clock: clk, Logger: slog.New(logs), Backoff: rotation.Backoff{Min: time.Second, Max: 10 * time.Second}})
	st := waitState(t, a, "a certificate for web and api, and the bundle", func(s agent.State) bool {
		return len(s.SVIDs) == 2 && s.BundlePEM != nil
	})

	// The socket: 0600, in a directory of its own.
	fi, err := os.Stat(socket)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %s: mode %s, want a socket 0600", socket, fi.Mode())
	}

	// State of the world, wildcard: exactly the node's secrets.
	c := sdsClient(t, socket)
	all := openSotW(t, c).until("web, api and the bundle", func(m map[string]*tlsv3.Secret) bool { return len(m) == 3 })
	want := []string{bundleName, idName("api"), idName("web")}
	got := make([]string, 0, len(all))
	for n := range all {
		got = append(got, n)
	}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("wildcard SDS serves %v, want %v", got, want)
	}
	for _, id := range []string{"web", "api"} {
		leaf := leafOf(t, all[idName(id)])
		v, _ := st.SVID(id)
		if !v.Key.Public().(*ecdsa.PublicKey).Equal(leaf.PublicKey) || serial(leaf) != v.Serial {
			t.Fatalf("%s: the socket serves a certificate that is not for the agent's own key", id)
		}
		if len(leaf.URIs) != 1 || leaf.URIs[0].String() != idName(id) {
			t.Fatalf("%s: certificate names %v", id, leaf.URIs)
		}
	}
	if all[bundleName].GetValidationContext().GetTrustedCa().GetInlineBytes() == nil {
		t.Fatal("bundle secret carries no roots")
	}

	// Fetch and delta answer what they name.
	fctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	fetched, err := c.FetchSecrets(fctx, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{idName("web")}})
	if err != nil {
		t.Fatalf("fetch: %v", err)
	}
	if fs := secretsOf(t, fetched.GetResources()); len(fs) != 1 || fs[idName("web")] == nil {
		t.Fatalf("fetch of web answered %d secrets", len(fs))
	}
	delta, err := c.DeltaSecrets(fctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{idName("api")}}); err != nil {
		t.Fatal(err)
	}
	dresp, err := delta.Recv()
	if err != nil {
		t.Fatalf("delta: %v", err)
	}
	if len(dresp.GetResources()) != 1 || dresp.GetResources()[0].GetName() != idName("api") {
		t.Fatalf("delta answered %d resources, want api's only", len(dresp.GetResources()))
	}

	// Files for proxyless gRPC: the same certificate and key; the key
	// 0600, the public chain and bundle 0644, in a 0700 directory.
	for _, id := range []string{"web", "api"} {
		v, _ := st.SVID(id)
		for name, perm := range map[string]os.FileMode{agentfiles.CertFile: 0o644, agentfiles.KeyFile: 0o600, agentfiles.BundleFile: 0o644, "": 0o700} {
			fi, err := os.Stat(filepath.Join(files, id, name))
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode().Perm() != perm {
				t.Fatalf("%s/%s: mode %s, want %s", id, name, fi.Mode().Perm(), perm)
			}
		}
		pair := mustRead(t, filepath.Join(files, id, agentfiles.CertFile))
		if leaf := testkit.ParseCertPEM(t, pair); serial(leaf) != v.Serial {
			t.Fatalf("%s: cert.pem holds serial %s, the agent serves %s", id, serial(leaf), v.Serial)
		}
	}

	// Rotation: at web's renewal point the agent makes a new key and the
	// socket pushes the new certificate.
	stream := openSotW(t, c, idName("web"), bundleName)
	stream.until("web", func(m map[string]*tlsv3.Secret) bool { return m[idName("web")] != nil })
	web, _ := st.SVID("web")
	renewAt := agent.DefaultPolicy.RenewAt(web.NotBefore, web.NotAfter, web.Serial)
	apiSVID, _ := st.SVID("api")
	// Both identities pass their renewal points; web is followed.
	both := renewAt
	if at := agent.DefaultPolicy.RenewAt(apiSVID.NotBefore, apiSVID.NotAfter, apiSVID.Serial); at.After(both) {
		both = at
	}
	if half := web.NotBefore.Add(web.NotAfter.Sub(web.NotBefore) / 2); renewAt.After(half) || renewAt.Before(half.Add(-web.NotAfter.Sub(web.NotBefore)/10)) {
		t.Fatalf("renewal at %s, want within the tenth of the lifetime before its half-life %s", renewAt, half)
	}
	clk.Set(both.Add(time.Second))
	rotated := stream.until("a new certificate for web", func(m map[string]*tlsv3.Secret) bool {
		s := m[idName("web")]
		return s != nil && serial(leafOf(t, s)) != web.Serial
	})
	newLeaf := leafOf(t, rotated[idName("web")])
	if newLeaf.PublicKey.(*ecdsa.PublicKey).Equal(web.Key.Public()) {
		t.Fatal("renewal kept the old key")
	}
	t.Logf("rotation: web renewed at %s after issue (lifetime %s): serial %s -> %s", renewAt.Sub(web.NotBefore).Round(time.Second), web.NotAfter.Sub(web.NotBefore), web.Serial, serial(newLeaf))

	// Revocation of another holder: the CRL on the socket lists it within
	// 2 s of the admin call.
	other := m.addAgentNode("agent-2", "web")
	otherLeaf := testkit.ParseCertPEM(t, testkit.CertPEM(other.Certificate[0]))
	start := time.Now()
	m.admin("POST", api.PathNodes+"/agent-2/revoke", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	stream.until("agent-2's certificate on the CRL", func(m map[string]*tlsv3.Secret) bool {
		s := m[bundleName]
		return s != nil && testkit.Revoked(t, s.GetValidationContext().GetCrl().GetInlineBytes())[serial(otherLeaf)]
	})
	took := time.Since(start)
	t.Logf("revocation: node revoke to CRL on the agent's SDS socket in %s (goal 2s)", took.Round(time.Millisecond))
	if took > 2*time.Second {
		t.Fatalf("the CRL reached the socket %s after the revocation, more than 2s", took)
	}

	// meshca unreachable: past three quarters of web's life the agent
	// warns, and keeps serving the certificate it has.
	st, _ = a.State()
	web, _ = st.SVID("web")
	proxy.Cut()
	mark := logs.count()
	clk.Set(web.NotBefore.Add(web.NotAfter.Sub(web.NotBefore) * 4 / 5))
	r := logs.waitFor(t, mark, slog.LevelWarn, "expires soon")
	t.Logf("meshca unreachable at 80%% of the certificate's life: %q", r.Message)
	fetched, err = c.FetchSecrets(fctx, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{idName("web")}})
	if err != nil {
		t.Fatalf("fetch while meshca is unreachable: %v", err)
	}
	if s := secretsOf(t, fetched.GetResources())[idName("web")]; s == nil || serial(leafOf(t, s)) != web.Serial {
		t.Fatal("the agent stopped serving web's certificate while meshca was unreachable")
	}

	// meshca back: the next retry renews.
	proxy.Restore()
	deadline := time.Now().Add(waitLimit)
	for {
		st, changed := a.State()
		if v, ok := st.SVID("web"); ok && v.Serial != web.Serial {
			t.Logf("meshca back: web renewed, serial %s", v.Serial)
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the agent did not renew after meshca came back")
		}
		clk.Add(10 * time.Second) // one backoff step at most
		select {
		case <-changed:
		case <-time.After(200 * time.Millisecond):
		}
	}

	// The store never held a key the agent made.
	st, _ = a.State()
	var keys [][]byte
	for _, v := range st.SVIDs {
		der, err := x509.MarshalPKCS8PrivateKey(v.Key)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, der, v.Key.(*ecdsa.PrivateKey).D.Bytes())
	}
	keys = append(keys, web.Key.(*ecdsa.PrivateKey).D.Bytes())
	scanned := 0
	err = filepath.Walk(m.dir, func(path string, fi os.FileInfo, err error) error {
		if err != nil || fi.IsDir() {
			return err
		}
		data := mustRead(t, path)
		scanned += len(data)
		for _, k := range keys {
			if bytes.Contains(data, k) {
				t.Errorf("%s holds an agent's key", path)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if scanned == 0 {
		t.Fatal("scanned no store bytes")
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}
