package app_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/http"
	"net/url"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	sotwclient "github.com/envoyproxy/go-control-plane/pkg/client/sotw/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
)

const recvTimeout = 10 * time.Second

// secrets decodes the Secret resources of a response, by name.
func secrets(t *testing.T, res []*anypb.Any) map[string]*tlsv3.Secret {
	t.Helper()
	out := map[string]*tlsv3.Secret{}
	for _, a := range res {
		s := &tlsv3.Secret{}
		if err := a.UnmarshalTo(s); err != nil {
			t.Fatal(err)
		}
		out[s.GetName()] = s
	}
	return out
}

func names[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// serialOf returns the serial (hex) of the leaf in a TLS secret.
func serialOf(t *testing.T, s *tlsv3.Secret) string {
	t.Helper()
	b, _ := pem.Decode(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	if b == nil {
		t.Fatalf("secret %s has no certificate chain", s.GetName())
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(s.GetTlsCertificate().GetPrivateKey().GetInlineBytes()) == 0 {
		t.Fatalf("secret %s has no private key", s.GetName())
	}
	return fmt.Sprintf("%x", c.SerialNumber)
}

type sotwStream interface {
	Send(*discovery.DiscoveryRequest) error
	Recv() (*discovery.DiscoveryResponse, error)
}

// recv waits for one response or fails the test.
func recv(t *testing.T, s sotwStream) *discovery.DiscoveryResponse {
	t.Helper()
	type result struct {
		r   *discovery.DiscoveryResponse
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := s.Recv()
		ch <- result{r, err}
	}()
	select {
	case res := <-ch:
		if res.err != nil {
			t.Fatalf("recv: %v", res.err)
		}
		return res.r
	case <-time.After(recvTimeout):
		t.Fatal("no response within 10s")
	}
	return nil
}

// recvErr waits for the stream to end and returns its status code.
func recvErr(t *testing.T, s sotwStream) codes.Code {
	t.Helper()
	ch := make(chan error, 1)
	go func() {
		for {
			if _, err := s.Recv(); err != nil {
				ch <- err
				return
			}
		}
	}()
	select {
	case err := <-ch:
		return status.Code(err)
	case <-time.After(recvTimeout):
		t.Fatal("stream not closed within 10s")
	}
	return codes.OK
}

func ack(t *testing.T, s sotwStream, r *discovery.DiscoveryResponse, names ...string) {
	t.Helper()
	if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
}

func TestADSSecretsByNameAndReissue(t *testing.T) {
	m := startMesh(t, nil)
	echo := m.addIdentity("echo")
	m.addIdentity("db")
	cert := m.joined("n1", "echo")
	m.joined("n2", "db")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ads, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{secretName(""), secretName("echo")}
	// Envoy sends the node on the first message only.
	if err := ads.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: want}); err != nil {
		t.Fatal(err)
	}
	r := recv(t, ads)
	got := secrets(t, r.GetResources())
	if !slices.Equal(names(got), want) {
		t.Fatalf("secrets = %v, want %v", names(got), want)
	}
	if serialOf(t, got[secretName("echo")]) != echo.Cert.Serial {
		t.Fatal("echo secret is not the identity's current certificate")
	}
	if len(got[secretName("")].GetValidationContext().GetTrustedCa().GetInlineBytes()) == 0 {
		t.Fatal("bundle secret has no trusted CA")
	}
	ack(t, ads, r, want...)

	var reissued api.Identity
	m.admin("POST", api.PathReissue+"/echo", struct{}{}, &reissued, http.StatusOK)
	r2 := recv(t, ads)
	got = secrets(t, r2.GetResources())
	if s := got[secretName("echo")]; s == nil || serialOf(t, s) != reissued.Cert.Serial || reissued.Cert.Serial == echo.Cert.Serial {
		t.Fatalf("reissued secret not pushed: %v", names(got))
	}
	if r2.GetVersionInfo() == r.GetVersionInfo() {
		t.Fatal("version did not change")
	}
	ack(t, ads, r2, want...)

	// node list shows the connection and the ACKed version. The ACK is
	// processed on the server's stream goroutine, which tells no one: poll.
	var n api.Node
	if !pollUntil(5*time.Second, 20*time.Millisecond, func() bool {
		m.admin("GET", api.PathNodes+"/n1", nil, &n, http.StatusOK)
		return n.Connection.Connected && n.Connection.Acked[resource.SecretType] == r2.GetVersionInfo() && n.Joined
	}) {
		t.Fatalf("node status = %+v", n)
	}
}

func TestSDSOneStreamPerSecret(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("echo")
	m.addIdentity("web")
	cert := m.joined("n1", "echo", "web")
	sdsClient := secretservice.NewSecretDiscoveryServiceClient(m.dial(cert))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	streams := map[string]secretservice.SecretDiscoveryService_StreamSecretsClient{}
	for _, id := range []string{"echo", "web", ""} {
		s, err := sdsClient.StreamSecrets(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, ResourceNames: []string{secretName(id)}}); err != nil {
			t.Fatal(err)
		}
		r := recv(t, s)
		got := secrets(t, r.GetResources())
		if !slices.Equal(names(got), []string{secretName(id)}) {
			t.Fatalf("stream for %q got %v", secretName(id), names(got))
		}
		ack(t, s, r, secretName(id))
		streams[id] = s
	}
	var reissued api.Identity
	m.admin("POST", api.PathReissue+"/web", struct{}{}, &reissued, http.StatusOK)
	got := secrets(t, recv(t, streams["web"]).GetResources())
	if serialOf(t, got[secretName("web")]) != reissued.Cert.Serial {
		t.Fatal("web stream did not get the reissued certificate")
	}
}

func TestDeltaADS(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("echo")
	m.addIdentity("db")
	cert := m.joined("n1", "echo")
	m.joined("n2", "db")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{secretName("echo")}}); err != nil {
		t.Fatal(err)
	}
	first := deltaRecv(t, d)
	if len(first.GetResources()) != 1 || first.GetResources()[0].GetName() != secretName("echo") {
		t.Fatalf("delta resources = %v", first.GetResources())
	}
	if err := d.Send(&discovery.DeltaDiscoveryRequest{TypeUrl: resource.SecretType, ResponseNonce: first.GetNonce()}); err != nil {
		t.Fatal(err)
	}
	var reissued api.Identity
	m.admin("POST", api.PathReissue+"/echo", struct{}{}, &reissued, http.StatusOK)
	upd := deltaRecv(t, d)
	if len(upd.GetResources()) != 1 {
		t.Fatalf("delta update = %v", upd.GetResources())
	}
	s := &tlsv3.Secret{}
	if err := upd.GetResources()[0].GetResource().UnmarshalTo(s); err != nil || serialOf(t, s) != reissued.Cert.Serial {
		t.Fatalf("delta update is not the reissued certificate: %v", err)
	}

	// A wildcard delta subscription covers the node's own secrets only.
	w, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{"*"}}); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range deltaRecv(t, w).GetResources() {
		got = append(got, r.GetName())
	}
	sort.Strings(got)
	if want := []string{secretName(""), secretName("echo")}; !slices.Equal(got, want) {
		t.Fatalf("wildcard delta got %v, want %v", got, want)
	}
}

func deltaRecv(t *testing.T, d discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) *discovery.DeltaDiscoveryResponse {
	t.Helper()
	ch := make(chan *discovery.DeltaDiscoveryResponse, 1)
	errc := make(chan error, 1)
	go func() {
		r, err := d.Recv()
		if err != nil {
			errc <- err
			return
		}
		ch <- r
	}()
	select {
	case r := <-ch:
		return r
	case err := <-errc:
		t.Fatalf("delta recv: %v", err)
	case <-time.After(recvTimeout):
		t.Fatal("no delta response within 10s")
	}
	return nil
}

func TestWildcardSotWSeesOnlyOwnSecrets(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("echo")
	m.addIdentity("db")
	cert := m.joined("n1", "echo")
	m.joined("n2", "db")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, wildcard := range [][]string{nil, {"*"}} {
		ads, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := ads.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: wildcard}); err != nil {
			t.Fatal(err)
		}
		got := names(secrets(t, recv(t, ads).GetResources()))
		if want := []string{secretName(""), secretName("echo")}; !slices.Equal(got, want) {
			t.Fatalf("wildcard %v got %v, want %v", wildcard, got, want)
		}
	}
}

func TestGoControlPlaneClient(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("echo")
	m.addIdentity("db")
	cert := m.joined("n1", "echo")
	m.joined("n2", "db")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := sotwclient.NewADSClient(ctx, &core.Node{Id: "n1"}, resource.SecretType)
	if err := c.InitConnect(m.dial(cert)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		r   *sotwclient.Response
		err error
	}
	ch := make(chan result, 1)
	go func() {
		r, err := c.Fetch()
		ch <- result{r, err}
	}()
	var res result
	select {
	case res = <-ch:
	case <-time.After(recvTimeout):
		t.Fatal("go-control-plane client got nothing within 10s")
	}
	if res.err != nil {
		t.Fatal(res.err)
	}
	got := names(secrets(t, res.r.Resources))
	if want := []string{secretName(""), secretName("echo")}; !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	if err := c.Ack(); err != nil {
		t.Fatal(err)
	}
	// The server records the ACK on its own goroutine, which tells no one:
	// poll the node's status.
	var n api.Node
	if !pollUntil(5*time.Second, 20*time.Millisecond, func() bool {
		m.admin("GET", api.PathNodes+"/n1", nil, &n, http.StatusOK)
		return n.Connection.Acked[resource.SecretType] != ""
	}) {
		t.Fatalf("ACK not seen: %+v", n.Connection)
	}
}

// foreignCert is a node-shaped certificate from a CA meshca never saw.
func foreignCert(t *testing.T) *tls.Certificate {
	t.Helper()
	ca := testkit.NewCA(t, pkix.Name{CommonName: "evil"}, time.Now().Add(time.Hour), nil)
	key := testkit.Key(t)
	u, _ := url.Parse("spiffe://mesh.local/node/n1")
	leaf := ca.Sign(t, &x509.Certificate{SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{u}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}, KeyUsage: x509.KeyUsageDigitalSignature}, key.Public())
	return testkit.Pair(leaf, key)
}

func TestAuthorizationMatrix(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("echo")
	m.addIdentity("db")
	n1 := m.joined("n1", "echo")
	m.joined("n2", "db")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	open := func(cert *tls.Certificate) (discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient, error) {
		return discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(ctx)
	}
	secret := func(names ...string) *discovery.DiscoveryRequest {
		return &discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: names}
	}
	tests := []struct {
		name  string
		cert  *tls.Certificate
		reqs  []*discovery.DiscoveryRequest
		code  codes.Code
		audit string // action whose denied count must grow
	}{
		{name: "no client certificate", cert: nil, reqs: []*discovery.DiscoveryRequest{secret(secretName("echo"))}, code: codes.Unauthenticated},
		{name: "certificate from another CA", cert: foreignCert(t), reqs: []*discovery.DiscoveryRequest{secret(secretName("echo"))}, code: codes.Unavailable, audit: "xds.auth"},
		{name: "another node's identity", cert: n1, reqs: []*discovery.DiscoveryRequest{secret(secretName("db"))}, code: codes.PermissionDenied, audit: "xds.request"},
		{name: "own and another's", cert: n1, reqs: []*discovery.DiscoveryRequest{secret(secretName("echo"), secretName("db"))}, code: codes.PermissionDenied, audit: "xds.request"},
		{name: "unknown secret", cert: n1, reqs: []*discovery.DiscoveryRequest{secret("spiffe://mesh.local/nobody")}, code: codes.PermissionDenied, audit: "xds.request"},
		{name: "prefix wildcard", cert: n1, reqs: []*discovery.DiscoveryRequest{secret("spiffe://mesh.local/*")}, code: codes.PermissionDenied, audit: "xds.request"},
		{name: "spoofed node.id", cert: n1, reqs: []*discovery.DiscoveryRequest{{Node: &core.Node{Id: "n2"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("db")}}}, code: codes.PermissionDenied, audit: "xds.request"},
		{name: "node.id changed later", cert: n1, reqs: []*discovery.DiscoveryRequest{
			secret(secretName("echo")),
			{Node: &core.Node{Id: "n2"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("echo")}},
		}, code: codes.PermissionDenied, audit: "xds.request"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := 0
			if tt.audit != "" {
				before = m.denials(tt.audit)
			}
			s, err := open(tt.cert)
			var code codes.Code
			if err != nil {
				code = status.Code(err)
			} else {
				leaked := make(chan []string, 16)
				for i, req := range tt.reqs {
					if err := s.Send(req); err != nil {
						break
					}
					if i < len(tt.reqs)-1 { // an allowed request first: take its answer
						r, err := s.Recv()
						if err != nil {
							break
						}
						leaked <- names(secrets(t, r.GetResources()))
					}
				}
				code = recvErr(t, s)
				close(leaked)
				for got := range leaked {
					if slices.Contains(got, secretName("db")) {
						t.Fatalf("db's secret leaked: %v", got)
					}
				}
			}
			if code != tt.code {
				t.Fatalf("code = %v, want %v", code, tt.code)
			}
			if tt.audit != "" {
				if after := m.denials(tt.audit); after <= before {
					t.Fatalf("refusal not audited as %s (denied %d -> %d)", tt.audit, before, after)
				}
			}
		})
	}

	t.Run("fetch", func(t *testing.T) {
		c := secretservice.NewSecretDiscoveryServiceClient(m.dial(n1))
		r, err := c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, ResourceNames: []string{secretName("echo")}})
		if err != nil {
			t.Fatal(err)
		}
		if got := names(secrets(t, r.GetResources())); !slices.Equal(got, []string{secretName("echo")}) {
			t.Fatalf("fetch got %v", got)
		}
		before := m.denials("xds.request")
		_, err = c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, ResourceNames: []string{secretName("db")}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("fetch of db: %v", err)
		}
		_, err = c.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: &core.Node{Id: "n2"}, ResourceNames: []string{secretName("db")}})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("fetch with spoofed node.id: %v", err)
		}
		if m.denials("xds.request") != before+2 {
			t.Fatal("fetch refusals not audited")
		}
	})

	t.Run("delta", func(t *testing.T) {
		for _, req := range []*discovery.DeltaDiscoveryRequest{
			{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{secretName("db")}},
			{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, InitialResourceVersions: map[string]string{secretName("db"): "x"}},
			{Node: &core.Node{Id: "n2"}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{secretName("echo")}},
		} {
			d, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(n1)).DeltaAggregatedResources(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if err := d.Send(req); err != nil {
				t.Fatal(err)
			}
			_, err = d.Recv()
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("delta %v: %v", req, err)
			}
		}
	})

	t.Run("unassigned secret is withdrawn but its name tolerated", func(t *testing.T) {
		m.admin("DELETE", api.PathNodes+"/n1/identities/echo", nil, nil, http.StatusOK)
		// Envoy keeps asking for a secret while listeners that used it
		// drain: the stream stays open and the secret is not served.
		s, err := open(n1)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(secret(secretName("echo"), secretName(""))); err != nil {
			t.Fatal(err)
		}
		got := names(secrets(t, recv(t, s).GetResources()))
		if slices.Contains(got, secretName("echo")) {
			t.Fatalf("unassigned secret served: %v", got)
		}
		// A secret the node never held is still refused.
		s2, err := open(n1)
		if err != nil {
			t.Fatal(err)
		}
		if err := s2.Send(secret(secretName("db"))); err != nil {
			t.Fatal(err)
		}
		if code := recvErr(t, s2); code != codes.PermissionDenied {
			t.Fatalf("code = %v", code)
		}
	})
}

func TestJoinTokens(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	m.addIdentity("echo")
	tok := m.addNode("n1", "sidecar", "echo")
	if _, err := m.join("n1", "wrong"+tok.Token); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("wrong token: %v", err)
	}
	if _, err := m.join("n1", tok.Token); err != nil {
		t.Fatal(err)
	}
	_, err := m.join("n1", tok.Token)
	if status.Code(err) != codes.PermissionDenied || !contains(err, "already used") {
		t.Fatalf("reused token: %v", err)
	}
	tok2 := m.addNode("n2", "sidecar", "echo")
	clk.Add(2 * time.Hour)
	_, err = m.join("n2", tok2.Token)
	if status.Code(err) != codes.PermissionDenied || !contains(err, "expired") {
		t.Fatalf("expired token: %v", err)
	}
	if _, err := m.join("nobody", tok2.Token); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unknown node: %v", err)
	}
	if n := m.denials("node.join"); n != 4 {
		t.Fatalf("%d join refusals audited, want 4", n)
	}
}

func TestExpiredNodeCertificate(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	m.addIdentity("echo")
	cert := m.joined("n1", "echo")
	clk.Add(25 * time.Hour) // node certificates live 24h
	before := m.denials("xds.auth")
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(context.Background())
	if err == nil {
		err = s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("echo")}})
		if err == nil {
			_, err = s.Recv()
		}
	}
	if err == nil || status.Code(err) == codes.OK {
		t.Fatal("expired node certificate accepted")
	}
	if m.denials("xds.auth") <= before {
		t.Fatal("refused handshake not audited")
	}
}

func contains(err error, s string) bool { return err != nil && strings.Contains(err.Error(), s) }

// TestSotWAndDeltaStreamsDoNotShareBindings: go-control-plane numbers SotW
// and delta streams separately, so stream 1 of each exists at once. Node
// evil's delta stream must stay bound to evil while victim's SotW stream 1
// is open.
func TestSotWAndDeltaStreamsDoNotShareBindings(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("payments")
	m.addIdentity("evilid")
	victim := m.joined("victim", "payments")
	evil := m.joined("evil", "evilid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	d, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(evil)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The delta stream is open once its first request is answered.
	if err := d.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "evil"}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{secretName("evilid")}}); err != nil {
		t.Fatal(err)
	}
	deltaRecv(t, d)
	v, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(victim)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "victim"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("payments")}}); err != nil {
		t.Fatal(err)
	}
	recv(t, v)
	if err := d.Send(&discovery.DeltaDiscoveryRequest{Node: &core.Node{Id: "victim"}, TypeUrl: resource.SecretType, ResourceNamesSubscribe: []string{secretName("payments")}}); err != nil {
		t.Fatal(err)
	}
	r, err := d.Recv()
	if err == nil {
		t.Fatalf("evil received %d resources for victim's node.id", len(r.GetResources()))
	}
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("err = %v, want PermissionDenied", err)
	}
}
