package testkit

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/bootstrap"
	"github.com/meshca/meshca/internal/bootstrap/envoycheck"
)

// XDSNode is a node's xDS client as Envoy runs it from the files meshca
// bootstrap wrote into a directory: mTLS with the node's certificate,
// meshca verified by its issuing CAs (meshca-issuers.pem) and its SPIFFE
// ID, one ADS stream for the named secrets, ACKs; and, when the stream
// breaks, a new one to the next endpoint of envoy.yaml's meshca_xds
// cluster (round robin), subscribing again.
type XDSNode struct {
	Servers []string // from envoy.yaml, in order
	// Updates receives each response; Ended the time each stream ended.
	Updates chan XDSUpdate
	Ended   chan time.Time

	tb    testing.TB
	node  string
	names []string
	tls   *tls.Config
}

// XDSUpdate is one response an XDSNode received.
type XDSUpdate struct {
	Server  string // the endpoint it came from
	Secrets map[string]*tlsv3.Secret
	At      time.Time
}

// NewXDSNode reads the node directory dir of node; the node will ask for
// the secrets names.
func NewXDSNode(tb testing.TB, dir, node, trustDomain string, names ...string) *XDSNode {
	tb.Helper()
	y, err := os.ReadFile(filepath.Join(dir, bootstrap.EnvoyFile))
	if err != nil {
		tb.Fatal(err)
	}
	b, err := envoycheck.ParseEnvoy(y)
	if err != nil {
		tb.Fatal(err)
	}
	var servers []string
	for _, lb := range b.GetStaticResources().GetClusters()[0].GetLoadAssignment().GetEndpoints()[0].GetLbEndpoints() {
		sa := lb.GetEndpoint().GetAddress().GetSocketAddress()
		servers = append(servers, sa.GetAddress()+":"+strconv.Itoa(int(sa.GetPortValue())))
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, bootstrap.CertFile), filepath.Join(dir, bootstrap.KeyFile))
	if err != nil {
		tb.Fatal(err)
	}
	issuersPEM, err := os.ReadFile(filepath.Join(dir, bootstrap.IssuersFile))
	if err != nil {
		tb.Fatal(err)
	}
	issuers := x509.NewCertPool()
	if !issuers.AppendCertsFromPEM(issuersPEM) {
		tb.Fatal("no issuing CA in the node directory")
	}
	serverID := "spiffe://" + trustDomain + "/meshca"
	cfg := &tls.Config{
		Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS13,
		// As Envoy: the issuing CAs are trust anchors, and the server is
		// spiffe://<td>/meshca whatever its address.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			certs, _, err := VerifyChain(raw, x509.VerifyOptions{Roots: issuers, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			if err == nil && (len(certs[0].URIs) != 1 || certs[0].URIs[0].String() != serverID) {
				err = errors.New("server is not " + serverID)
			}
			return err
		},
	}
	return NewXDSNodeTLS(tb, node, servers, cfg, names...)
}

// NewXDSNodeTLS is an XDSNode that connects to servers with cfg.
func NewXDSNodeTLS(tb testing.TB, node string, servers []string, cfg *tls.Config, names ...string) *XDSNode {
	return &XDSNode{
		Servers: servers, Updates: make(chan XDSUpdate, 64), Ended: make(chan time.Time, 64),
		tb: tb, node: node, names: names, tls: cfg,
	}
}

// Run keeps an ADS stream open to one of the servers until ctx ends,
// going round the servers, with a 100 ms pause after each full round.
func (n *XDSNode) Run(ctx context.Context) {
	for i := 0; ctx.Err() == nil; i++ {
		addr := n.Servers[i%len(n.Servers)]
		err := n.stream(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		select {
		case n.Ended <- time.Now():
		default:
		}
		n.tb.Logf("node %s: stream to %s ended: %v", n.node, addr, status.Code(err))
		if i%len(n.Servers) == len(n.Servers)-1 {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
			}
		}
	}
}

func (n *XDSNode) stream(ctx context.Context, addr string) error {
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(n.tls)))
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	s, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: n.node}, TypeUrl: resource.SecretType, ResourceNames: n.names}); err != nil {
		return err
	}
	for {
		r, err := s.Recv()
		if err != nil {
			return err
		}
		got := map[string]*tlsv3.Secret{}
		for _, a := range r.GetResources() {
			sec := &tlsv3.Secret{}
			if a.UnmarshalTo(sec) == nil {
				got[sec.GetName()] = sec
			}
		}
		if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: n.names}); err != nil {
			return err
		}
		select {
		case n.Updates <- XDSUpdate{Server: addr, Secrets: got, At: time.Now()}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Until waits for an update for which ok holds, or fails the test.
func (n *XDSNode) Until(what string, timeout time.Duration, ok func(XDSUpdate) bool) XDSUpdate {
	n.tb.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case u := <-n.Updates:
			if ok(u) {
				return u
			}
		case <-deadline:
			n.tb.Fatalf("node %s: %s: not within %s", n.node, what, timeout)
		}
	}
}

// Start runs the node until the test ends.
func (n *XDSNode) Start() {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); n.Run(ctx) }()
	n.tb.Cleanup(func() { cancel(); <-done })
}
