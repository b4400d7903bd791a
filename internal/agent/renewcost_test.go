package agent_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/testkit"
	"github.com/meshca/meshca/nodeapi"
	"github.com/meshca/meshca/sds"
)

// signingMeshca is the meshca side of the node service as an agent sees
// it, and no more: Identities and WatchIdentities name the identities and
// the issuing CA, SignCSR signs each CSR honestly with one CA, and SDS
// serves the trust-domain bundle. switchIssuer names another issuing CA on
// the watch, as a CA rotation does, so that the agent re-keys every
// identity at once. Its own work is small (a parse and a signature per
// CSR) and is counted in the same-run baseline of the cost benchmark.
type signingMeshca struct {
	ca         *testkit.CA
	identities []nodeapi.AssignedIdentity
	bundlePEM  []byte

	// refuse, when set, runs first at each CSR: an error is the answer.
	refuse func() error

	mu      sync.Mutex
	issuer  int
	changed chan struct{} // closed and replaced at each switch
}

func newSigningMeshca(tb testing.TB, identities int) *signingMeshca {
	tb.Helper()
	m := &signingMeshca{ca: testkit.NewCA(tb, pkix.Name{CommonName: "meshca"}, time.Now().Add(24*time.Hour), nil), changed: make(chan struct{})}
	m.bundlePEM = testkit.CertPEM(m.ca.Cert.Raw)
	for i := range identities {
		name := fmt.Sprintf("svc-%03d", i)
		m.identities = append(m.identities, nodeapi.AssignedIdentity{Name: name, SPIFFEID: idName(name)})
	}
	return m
}

func (m *signingMeshca) answer() (nodeapi.IdentitiesResponse, <-chan struct{}) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return nodeapi.IdentitiesResponse{Identities: m.identities, IssuerSerial: m.issuerSerial()}, m.changed
}

func (m *signingMeshca) issuerSerial() string { return "ca-" + strconv.Itoa(m.issuer) }

// switchIssuer names a new issuing CA and returns its serial.
func (m *signingMeshca) switchIssuer() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.issuer++
	close(m.changed)
	m.changed = make(chan struct{})
	return m.issuerSerial()
}

// signCSR is SignCSR: the certificate meshca would issue for the CSR's key.
func (m *signingMeshca) signCSR(tb testing.TB, req *nodeapi.SignRequest) (*nodeapi.SignResponse, error) {
	csr, err := x509.ParseCertificateRequest(req.CSR)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, err
	}
	u, _ := url.Parse(idName(req.Identity))
	m.mu.Lock()
	issuer := m.issuerSerial()
	m.mu.Unlock()
	leaf := m.ca.Sign(tb, &x509.Certificate{SerialNumber: testkit.Serial(tb), NotBefore: time.Now().Add(-time.Minute),
		NotAfter: time.Now().Add(time.Hour), URIs: []*url.URL{u}, KeyUsage: x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}, csr.PublicKey)
	return &nodeapi.SignResponse{Identity: req.Identity, ChainPEM: string(testkit.CertPEM(leaf.Raw)), BundlePEM: string(m.bundlePEM),
		Serial: leaf.SerialNumber.Text(16), NotAfter: leaf.NotAfter, IssuerSerial: issuer}, nil
}

// start serves the node service and SDS on loopback and returns a
// connection to them, as the agent's.
func (m *signingMeshca) start(tb testing.TB) *grpc.ClientConn {
	tb.Helper()
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
				resp, _ := m.answer()
				return &resp, nil
			}},
			{MethodName: nodeapi.SignMethod, Handler: func(_ any, _ context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
				req := new(nodeapi.SignRequest)
				if err := dec(req); err != nil {
					return nil, err
				}
				if m.refuse != nil {
					if err := m.refuse(); err != nil {
						return nil, err
					}
				}
				return m.signCSR(tb, req)
			}},
		},
		Streams: []grpc.StreamDesc{{StreamName: nodeapi.WatchIdentitiesMethod, ServerStreams: true, Handler: func(_ any, stream grpc.ServerStream) error {
			if err := stream.RecvMsg(new(nodeapi.IdentitiesRequest)); err != nil {
				return err
			}
			for {
				resp, changed := m.answer()
				if err := stream.SendMsg(&resp); err != nil {
					return err
				}
				select {
				case <-changed:
				case <-stream.Context().Done():
					return nil
				}
			}
		}}},
	}, struct{}{})
	trust := cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	bundle, err := sds.ValidationSecret(bundleName, m.bundlePEM, nil)
	if err != nil {
		tb.Fatal(err)
	}
	snap, err := cachev3.NewSnapshot("1", map[resource.Type][]types.Resource{resource.SecretType: {bundle}})
	if err != nil {
		tb.Fatal(err)
	}
	if err := trust.SetSnapshot(context.Background(), "bench-node", snap); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	secretv3.RegisterSecretDiscoveryServiceServer(s, serverv3.NewServer(ctx, trust, nil))
	return serveLoopback(tb, s)
}

// rawRenewal is the least work one renewal needs, on both sides: a P-256
// key, its CSR, the CSR parsed and checked and the certificate signed (the
// signer's part), the chain parsed and verified against the bundle (the
// agent's check).
func (m *signingMeshca) rawRenewal(tb testing.TB, roots *x509.CertPool) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		tb.Fatal(err)
	}
	resp, err := m.signCSR(tb, &nodeapi.SignRequest{Identity: "raw", CSR: der})
	if err != nil {
		tb.Fatal(err)
	}
	block, _ := pem.Decode([]byte(resp.ChainPEM))
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		tb.Fatal(err)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		tb.Fatal(err)
	}
}

// processCPU is the CPU time (user and system) this process has used.
func processCPU(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// sdsFollower is one state-of-the-world SDS stream on the agent's socket
// naming every identity and the bundle, as the agentcost harness's Envoy:
// it acknowledges every answer and records its version (the agent's state
// version it was published from) without decoding the secrets, so that the
// client's own work stays small beside the agent's.
type sdsFollower struct {
	mu      sync.Mutex
	version uint64
	answers int
	changed chan struct{}
	last    *discoveryv3.DiscoveryResponse
}

func followSDS(tb testing.TB, socket string, names []string) *sdsFollower {
	tb.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	tb.Cleanup(cancel)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(conn).StreamSecrets(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	f := &sdsFollower{changed: make(chan struct{})}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resource.SecretType, ResourceNames: names}
	if err := stream.Send(req); err != nil {
		tb.Fatal(err)
	}
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				return
			}
			v, _ := strconv.ParseUint(resp.GetVersionInfo(), 10, 64)
			f.mu.Lock()
			f.version, f.last = v, resp
			f.answers++
			close(f.changed)
			f.changed = make(chan struct{})
			f.mu.Unlock()
			req.VersionInfo, req.ResponseNonce = resp.GetVersionInfo(), resp.GetNonce()
			if stream.Send(req) != nil {
				return
			}
		}
	}()
	return f
}

// waitVersion waits until the stream was served state version v or later
// and returns that answer and how many answers came so far.
func (f *sdsFollower) waitVersion(tb testing.TB, v uint64) (*discoveryv3.DiscoveryResponse, int) {
	tb.Helper()
	deadline := time.After(waitLimit)
	for {
		f.mu.Lock()
		got, last, n, changed := f.version, f.last, f.answers, f.changed
		f.mu.Unlock()
		if got >= v {
			return last, n
		}
		select {
		case <-changed:
		case <-deadline:
			tb.Fatalf("the SDS stream never got state version %d (last %d)", v, got)
		}
	}
}

// BenchmarkAgentRenewal measures the agent's CPU per renewal when a CA
// switch re-keys all of its identities at once (the agentcost harness's
// round, in-process): from the switch pushed on the identity watch until
// an SDS stream naming every secret, as Envoy's, is served the state that
// holds every new certificate. Figures: CPU of the process per renewal
// (the agent, the signer and the SDS client), the same-run baseline of the
// raw work of as many renewals (rawRenewal: key, CSR, signature, check),
// and their ratio; ns/op is the wall time per renewal.
func BenchmarkAgentRenewal(b *testing.B) {
	for _, n := range []int{10, 100} {
		b.Run(fmt.Sprintf("identities=%d", n), func(b *testing.B) { benchRenewal(b, n) })
	}
}

func benchRenewal(b *testing.B, identities int) {
	m := newSigningMeshca(b, identities)
	conn := m.start(b)
	socket := filepath.Join(b.TempDir(), "sds.sock")
	a, err := agent.New(agent.Config{Conn: conn, Node: "bench-node", TrustDomain: td, SDSSocket: socket})
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	b.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			b.Errorf("agent stopped with: %v", err)
		}
	})
	names := []string{bundleName}
	for _, ai := range m.identities {
		names = append(names, ai.SPIFFEID)
	}
	issuer, _ := m.answer()
	st := waitRenewed(b, a, identities, issuer.IssuerSerial, agent.State{})
	f := followSDS(b, socket, names)
	f.waitVersion(b, st.Version)
	roots := x509.NewCertPool()
	roots.AddCert(m.ca.Cert)

	var agentCPU, rawCPU time.Duration
	renewals, answers := 0, 0
	b.ResetTimer()
	for renewals < b.N {
		cpu0 := processCPU(b)
		_, answers0 := f.waitVersion(b, st.Version)
		serial := m.switchIssuer()
		st = waitRenewed(b, a, identities, serial, st)
		last, answers1 := f.waitVersion(b, st.Version)
		agentCPU += processCPU(b) - cpu0
		renewals += identities
		answers += answers1 - answers0
		b.StopTimer()
		checkServed(b, last, st)
		cpu0 = processCPU(b)
		for range identities {
			m.rawRenewal(b, roots)
		}
		rawCPU += processCPU(b) - cpu0
		b.StartTimer()
	}
	b.StopTimer()
	perRenewal := float64(agentCPU.Nanoseconds()) / float64(renewals)
	raw := float64(rawCPU.Nanoseconds()) / float64(renewals)
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(renewals), "ns/op")
	b.ReportMetric(perRenewal/1e3, "cpu-µs/renewal")
	b.ReportMetric(raw/1e3, "raw-cpu-µs/renewal")
	b.ReportMetric(perRenewal/raw, "×raw")
	b.ReportMetric(float64(answers)/float64(renewals/identities), "sds-answers/round")
	b.Logf("%d identities re-keyed at once, %d rounds: agent CPU %.0f µs per renewal against %.0f µs of raw work (%.2f×); %.1f SDS answers per round",
		identities, renewals/identities, perRenewal/1e3, raw/1e3, perRenewal/raw, float64(answers)/float64(renewals/identities))
}

// waitRenewed waits until the agent holds, for each of n identities, a
// certificate from issuer other than the one it held in old.
func waitRenewed(tb testing.TB, a *agent.Agent, n int, issuer string, old agent.State) agent.State {
	tb.Helper()
	deadline := time.After(waitLimit)
	for {
		st, changed := a.State()
		renewed := len(st.SVIDs) == n
		for _, v := range st.SVIDs {
			if o, ok := old.SVID(v.Identity); v.IssuerSerial != issuer || ok && o.Serial == v.Serial {
				renewed = false
				break
			}
		}
		if renewed {
			return st
		}
		select {
		case <-changed:
		case <-deadline:
			tb.Fatalf("the agent did not re-key its %d identities under %s", n, issuer)
		}
	}
}

// checkServed checks that the answer carries every certificate of st.
func checkServed(tb testing.TB, resp *discoveryv3.DiscoveryResponse, st agent.State) {
	tb.Helper()
	got := map[string]string{}
	for _, r := range resp.GetResources() {
		s := new(tlsv3.Secret)
		if err := r.UnmarshalTo(s); err != nil {
			tb.Fatal(err)
		}
		got[s.GetName()] = string(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
	}
	for _, v := range st.SVIDs {
		if got[v.ID.String()] != string(v.ChainPEM) {
			tb.Fatalf("the SDS answer of version %s does not serve %s's certificate %s", resp.GetVersionInfo(), v.Identity, v.Serial)
		}
	}
}

// TestAgentPublishesRenewalBurstTogether: a CA switch re-keys 40
// identities at once; the SDS socket publishes that burst as a few states,
// not one per certificate (each would be rebuilt and sent to the proxy),
// and the last one serves every new certificate. The agent's clock is a
// fake that never moves, so the bound on the wait (publishDelay) never
// fires: the burst is published once no renewal is pending.
func TestAgentPublishesRenewalBurstTogether(t *testing.T) {
	const identities = 40
	m := newSigningMeshca(t, identities)
	conn := m.start(t)
	socket := filepath.Join(t.TempDir(), "sds.sock")
	a := startAgent(t, agent.Config{Conn: conn, Node: "bench-node", TrustDomain: td, SDSSocket: socket, Clock: clock.NewFake(time.Now()), Logger: testkit.Logger(t)})
	names := []string{bundleName}
	for _, ai := range m.identities {
		names = append(names, ai.SPIFFEID)
	}
	first, _ := m.answer()
	st := waitRenewed(t, a, identities, first.IssuerSerial, agent.State{})
	f := followSDS(t, socket, names)
	_, before := f.waitVersion(t, st.Version)

	serial := m.switchIssuer()
	st = waitRenewed(t, a, identities, serial, st)
	last, after := f.waitVersion(t, st.Version)
	checkServed(t, last, st)
	answers := after - before
	t.Logf("%d identities re-keyed at once: %d SDS answers on the stream (state version %d)", identities, answers, st.Version)
	// One answer when the burst ends; a few more if a renewal ends
	// before the last identity's has begun. One per certificate is what
	// is avoided.
	if answers > identities/4 {
		t.Fatalf("%d SDS answers for a burst of %d renewals: the burst is published per certificate", answers, identities)
	}
}
