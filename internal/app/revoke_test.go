package app_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/testkit"
)

// proxy is a node's ADS stream acting as Envoy: it keeps the latest
// secrets it received.
type proxy struct {
	t       *testing.T
	stream  discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	updates chan map[string]*tlsv3.Secret
	done    chan error
}

func subscribe(t *testing.T, m *mesh, node string, cert *tls.Certificate, names ...string) *proxy {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	p := &proxy{t: t, stream: s, updates: make(chan map[string]*tlsv3.Secret, 16), done: make(chan error, 1)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				p.done <- err
				return
			}
			got := map[string]*tlsv3.Secret{}
			for _, a := range r.GetResources() {
				sec := &tlsv3.Secret{}
				if a.UnmarshalTo(sec) == nil {
					got[sec.GetName()] = sec
				}
			}
			// ACK, as Envoy does.
			_ = s.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names})
			p.updates <- got
		}
	}()
	return p
}

// next waits for the next update.
func (p *proxy) next() map[string]*tlsv3.Secret {
	p.t.Helper()
	select {
	case u := <-p.updates:
		return u
	case err := <-p.done:
		p.t.Fatalf("stream ended: %v", err)
	case <-time.After(recvTimeout):
		p.t.Fatal("no update within 10s")
	}
	return nil
}

// tlsCert turns a delivered identity secret into a crypto/tls certificate.
func tlsCert(t *testing.T, s *tlsv3.Secret) tls.Certificate {
	t.Helper()
	c, err := tls.X509KeyPair(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), s.GetTlsCertificate().GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// verifier checks peers as Envoy does with the delivered validation
// context: chain to trusted_ca, then the leaf against the CRL.
func verifier(t *testing.T, vc *tlsv3.Secret) func([][]byte, [][]*x509.Certificate) error {
	return verifierAt(t, vc, time.Now)
}

func verifierAt(t *testing.T, vc *tlsv3.Secret, now func() time.Time) func([][]byte, [][]*x509.Certificate) error {
	t.Helper()
	ctx := vc.GetValidationContext()
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ctx.GetTrustedCa().GetInlineBytes()) {
		t.Fatal("no trusted CA in the validation secret")
	}
	crls := testkit.ParseCRLs(t, ctx.GetCrl().GetInlineBytes())
	return func(raw [][]byte, _ [][]*x509.Certificate) error {
		certs, chains, err := testkit.VerifyChain(raw, x509.VerifyOptions{Roots: roots, CurrentTime: now(), KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
		if err != nil {
			return err
		}
		issuer := chains[0][1]
		for _, crl := range crls {
			if crl.CheckSignatureFrom(issuer) != nil {
				continue
			}
			for _, e := range crl.RevokedCertificateEntries {
				if e.SerialNumber.Cmp(certs[0].SerialNumber) == 0 {
					return fmt.Errorf("certificate %x is revoked", certs[0].SerialNumber)
				}
			}
		}
		return nil
	}
}

// handshake runs one mTLS handshake between a server and a client built
// from delivered secrets, on loopback.
func handshake(t *testing.T, server tls.Certificate, serverVC *tlsv3.Secret, client tls.Certificate, clientVC *tlsv3.Secret) error {
	return handshakeAt(t, time.Now, server, serverVC, client, clientVC)
}

func handshakeAt(t *testing.T, now func() time.Time, server tls.Certificate, serverVC *tlsv3.Secret, client tls.Certificate, clientVC *tlsv3.Secret) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{server}, ClientAuth: tls.RequireAnyClientCert,
		VerifyPeerCertificate: verifierAt(t, serverVC, now), MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	srvErr := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if err := c.(*tls.Conn).Handshake(); err != nil {
			srvErr <- err
			return
		}
		_, err = c.Write([]byte("ok"))
		srvErr <- err
	}()
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", ln.Addr().String(), &tls.Config{
		Certificates: []tls.Certificate{client}, InsecureSkipVerify: true,
		VerifyPeerCertificate: verifierAt(t, clientVC, now), MinVersion: tls.VersionTLS13,
	})
	if err != nil {
		<-srvErr
		return err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	_, rerr := io.ReadAll(io.LimitReader(conn, 2))
	if err := <-srvErr; err != nil {
		return err
	}
	return rerr
}

func TestRevocationReachesProxies(t *testing.T) {
	m := startMesh(t, nil)
	for _, id := range []string{"echo", "web", "db"} {
		m.addIdentity(id)
	}
	srvNode := m.joined("server-node", "echo")
	cliNode := m.joined("client-node", "web", "db")
	server := subscribe(t, m, "server-node", srvNode, secretName(""), secretName("echo"))
	client := subscribe(t, m, "client-node", cliNode, secretName(""), secretName("web"), secretName("db"))
	srvSecrets, cliSecrets := server.next(), client.next()
	echo, web, db := tlsCert(t, srvSecrets[secretName("echo")]), tlsCert(t, cliSecrets[secretName("web")]), tlsCert(t, cliSecrets[secretName("db")])
	for name, c := range map[string]tls.Certificate{"web": web, "db": db} {
		if err := handshake(t, echo, srvSecrets[secretName("")], c, cliSecrets[secretName("")]); err != nil {
			t.Fatalf("%s before revocation: %v", name, err)
		}
	}

	start := time.Now()
	var res api.Revoked
	m.admin("POST", api.PathRevoke+"/web", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	webSerial := fmt.Sprintf("%x", web.Leaf.SerialNumber)
	if !slices.Contains(res.Serials, webSerial) {
		t.Fatalf("revoked serials %v lack the delivered one %s", res.Serials, webSerial)
	}
	// The server node gets the CRL in its bundle secret within 2 seconds.
	var bundle *tlsv3.Secret
	for bundle == nil || len(bundle.GetValidationContext().GetCrl().GetInlineBytes()) == 0 {
		bundle = server.next()[secretName("")]
	}
	took := time.Since(start)
	t.Logf("revoke to CRL at the server node: %s", took)
	if took > 2*time.Second {
		t.Fatalf("CRL took %s to arrive", took)
	}
	if !bundle.GetValidationContext().GetOnlyVerifyLeafCertCrl() {
		t.Fatal("only_verify_leaf_cert_crl not set: Envoy would demand a CRL for the root too")
	}
	// The client node loses web's secret and keeps db's, within the same
	// 2 seconds. The new CRL and the node's own rebuild are two pushes
	// whose order is not fixed: the bundle swap may come first.
	upd := client.next()
	for _, ok := upd[secretName("web")]; ok; _, ok = upd[secretName("web")] {
		if time.Since(start) > 2*time.Second {
			t.Fatal("revoked identity's secret still served")
		}
		upd = client.next()
	}
	if bundle := upd[secretName("")]; len(bundle.GetValidationContext().GetCrl().GetInlineBytes()) == 0 {
		upd = client.next() // the node's rebuild came first: the CRL follows
	}
	if _, ok := upd[secretName("db")]; !ok {
		t.Fatalf("db's secret missing after web's revocation: %v", names(upd))
	}
	if err := handshake(t, echo, bundle, web, upd[secretName("")]); err == nil {
		t.Fatal("server accepted the revoked client certificate")
	}
	if err := handshake(t, echo, bundle, db, upd[secretName("")]); err != nil {
		t.Fatalf("db after web's revocation: %v", err)
	}

	// openssl agrees, from the pushed CRL and the CRL served at /crl.
	dir := t.TempDir()
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	chainPEM := func(c tls.Certificate) (leaf, rest []byte) {
		leaf = testkit.CertPEM(c.Certificate[0])
		for _, der := range c.Certificate[1:] {
			rest = append(rest, testkit.CertPEM(der)...)
		}
		return leaf, rest
	}
	caFile := write("bundle.pem", bundle.GetValidationContext().GetTrustedCa().GetInlineBytes())
	crlFile := write("crl.pem", bundle.GetValidationContext().GetCrl().GetInlineBytes())
	served, err := m.http.Get("http://" + m.app.Admin + api.PathCRL)
	if err != nil {
		t.Fatal(err)
	}
	servedPEM, _ := io.ReadAll(served.Body)
	served.Body.Close()
	if string(servedPEM) != string(bundle.GetValidationContext().GetCrl().GetInlineBytes()) {
		t.Fatal("GET /crl differs from the pushed CRL")
	}
	for name, c := range map[string]tls.Certificate{"web": web, "db": db} {
		leaf, rest := chainPEM(c)
		out, err := exec.Command("openssl", "verify", "-crl_check", "-CAfile", caFile, "-CRLfile", crlFile,
			"-untrusted", write(name+"-chain.pem", rest), write(name+".pem", leaf)).CombinedOutput()
		switch name {
		case "web":
			if err == nil || !strings.Contains(string(out), "revoked") {
				t.Fatalf("openssl accepted the revoked certificate: %s", out)
			}
		case "db":
			if err != nil {
				t.Fatalf("openssl refused db: %v %s", err, out)
			}
		}
	}

	// Revocation and CRL survive a restart.
	m = m.restart()
	var id api.Identity
	m.admin("GET", api.PathIdentities+"/web", nil, &id, http.StatusOK)
	if id.State != "revoked" {
		t.Fatalf("after restart web is %s", id.State)
	}
	again, err := m.http.Get("http://" + m.app.Admin + api.PathCRL)
	if err != nil {
		t.Fatal(err)
	}
	againPEM, _ := io.ReadAll(again.Body)
	again.Body.Close()
	b, _ := pem.Decode(againPEM)
	if b == nil {
		t.Fatal("no CRL after restart")
	}
	crl, err := x509.ParseRevocationList(b.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, e := range crl.RevokedCertificateEntries {
		found = found || e.SerialNumber.Cmp(web.Leaf.SerialNumber) == 0
	}
	if !found {
		t.Fatal("CRL after restart lacks web's serial")
	}
	// After the restart the client node, whose listeners still name web's
	// secret, keeps its stream: web is withdrawn, not forbidden.
	again2 := subscribe(t, m, "client-node", cliNode, secretName(""), secretName("web"), secretName("db"))
	got := again2.next()
	if _, ok := got[secretName("web")]; ok {
		t.Fatal("revoked secret served after restart")
	}
	if _, ok := got[secretName("db")]; !ok {
		t.Fatalf("after restart the client node got %v", names(got))
	}
}

func TestNodeRevokeClosesStreams(t *testing.T) {
	m := startMesh(t, nil)
	m.addIdentity("echo")
	cert := m.joined("n1", "echo")
	p := subscribe(t, m, "n1", cert, secretName("echo"))
	p.next()
	start := time.Now()
	m.admin("POST", api.PathNodes+"/n1/revoke", api.RevokeRequest{Reason: "test"}, nil, http.StatusOK)
	select {
	case err := <-p.done:
		if c := status.Code(err); c != codes.Canceled && c != codes.Unavailable && c != codes.PermissionDenied {
			t.Fatalf("stream ended with %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("revoked node's stream still open after 2s")
	}
	t.Logf("node revoke to stream closed: %s", time.Since(start))
	// A new stream on a new connection is refused.
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(cert)).StreamAggregatedResources(context.Background())
	if err == nil {
		s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: "n1"}, TypeUrl: resource.SecretType, ResourceNames: []string{secretName("echo")}})
		_, err = s.Recv()
	}
	if err == nil {
		t.Fatal("revoked node served again")
	}
}
