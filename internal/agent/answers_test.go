package agent_test

import (
	"context"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"net"
	"net/url"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
)

// lyingMeshca serves the node service's Identities and SignCSR as a
// compromised or buggy server might: the identities it names and the
// certificate it returns for each CSR are the test's choice (a nil sign
// answers honestly). It serves no identity watch, as a meshca that
// predates it.
type lyingMeshca struct {
	mu         sync.Mutex
	identities []nodeapi.AssignedIdentity
	sign       func(csr *x509.CertificateRequest) (leafKey crypto.PublicKey, uri string)
	ca         *testkit.CA
	signed     atomic.Int64
	// before, when set, runs at each CSR before it is answered.
	before func()
}

func (l *lyingMeshca) start(t *testing.T) *grpc.ClientConn {
	t.Helper()
	encoding.RegisterCodec(nodeapi.Codec{})
	s := grpc.NewServer()
	s.RegisterService(&grpc.ServiceDesc{
		ServiceName: nodeapi.Service,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: nodeapi.IdentitiesMethod, Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				if err := dec(new(nodeapi.IdentitiesRequest)); err != nil {
					return nil, err
				}
				l.mu.Lock()
				defer l.mu.Unlock()
				return &nodeapi.IdentitiesResponse{Identities: l.identities}, nil
			}},
			{MethodName: nodeapi.SignMethod, Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				req := new(nodeapi.SignRequest)
				if err := dec(req); err != nil {
					return nil, err
				}
				csr, err := x509.ParseCertificateRequest(req.CSR)
				if err != nil {
					return nil, err
				}
				if l.before != nil {
					l.before()
				}
				pub, uri := any(csr.PublicKey), idName(req.Identity) // nil sign: honest
				if l.sign != nil {
					pub, uri = l.sign(csr)
				}
				u, _ := url.Parse(uri)
				leaf := l.ca.Sign(t, &x509.Certificate{SerialNumber: testkit.Serial(t), NotBefore: time.Now().Add(-time.Minute),
					NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}, pub)
				l.signed.Add(1)
				return &nodeapi.SignResponse{Identity: req.Identity, ChainPEM: string(testkit.CertPEM(leaf.Raw)),
					BundlePEM: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: l.ca.Cert.Raw})), Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter}, nil
			}},
		},
	}, struct{}{})
	return serveLoopback(t, s)
}

// serveLoopback serves s on a free loopback port until the test ends and
// returns a plaintext connection to it.
func serveLoopback(tb testing.TB, s *grpc.Server) *grpc.ClientConn {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	go s.Serve(lis)
	tb.Cleanup(s.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	return conn
}

// TestAgentRefusesWrongAnswers: a certificate for a key the agent did not
// make, or for another identity, is never served; an identity name that is
// not one (a path out of the files directory), or named with another
// SPIFFE ID, is refused before anything is made for it.
func TestAgentRefusesWrongAnswers(t *testing.T) {
	web := []nodeapi.AssignedIdentity{{Name: "web", SPIFFEID: idName("web")}}
	for _, tc := range []struct {
		name       string
		identities []nodeapi.AssignedIdentity
		sign       func(csr *x509.CertificateRequest) (crypto.PublicKey, string)
		logged     string
	}{
		{"another key", web, func(*x509.CertificateRequest) (crypto.PublicKey, string) {
			return testkit.Key(t).Public(), idName("web")
		}, "no certificate yet"},
		{"another identity", web, func(csr *x509.CertificateRequest) (crypto.PublicKey, string) {
			return csr.PublicKey, idName("admin")
		}, "no certificate yet"},
		{"a name out of the files directory", []nodeapi.AssignedIdentity{{Name: "../../etc", SPIFFEID: idName("../../etc")}}, func(csr *x509.CertificateRequest) (crypto.PublicKey, string) {
			return csr.PublicKey, idName("web")
		}, "cannot list the node's identities"},
		{"a name under another SPIFFE ID", []nodeapi.AssignedIdentity{{Name: "web", SPIFFEID: idName("admin")}}, func(csr *x509.CertificateRequest) (crypto.PublicKey, string) {
			return csr.PublicKey, idName("web")
		}, "cannot list the node's identities"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			listed := tc.logged == "cannot list the node's identities"
			l := &lyingMeshca{identities: tc.identities, sign: tc.sign, ca: testkit.NewCA(t, pkix.Name{CommonName: "liar"}, time.Now().Add(24*time.Hour), nil)}
			conn := l.start(t)
			logs := newLogRecorder(t)
			files := t.TempDir()
			a := startAgent(t, agent.Config{Conn: conn, Node: "n", TrustDomain: td, FilesDir: files, Clock: clock.NewFake(time.Now()), Logger: slog.New(logs)})
			r := logs.waitFor(t, 0, slog.LevelWarn, tc.logged)
			var errText string
			r.Attrs(func(at slog.Attr) bool {
				if at.Key == "err" {
					errText = at.Value.String()
				}
				return true
			})
			t.Logf("refused: %s", errText)
			if st, _ := a.State(); len(st.SVIDs) != 0 {
				t.Fatalf("the agent serves %d certificates from a lying server", len(st.SVIDs))
			}
			if entries, err := os.ReadDir(files); err != nil || len(entries) != 0 {
				t.Fatalf("files written from a lying server: %d (%v)", len(entries), err)
			}
			if listed && l.signed.Load() != 0 {
				t.Fatal("a CSR was sent for an invalid identity name")
			}
		})
	}
}
