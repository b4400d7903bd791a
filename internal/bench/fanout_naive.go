package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"math/big"
	"net"
	"os"
	"runtime"
	"strconv"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
)

// NaiveInput is what the naive-xds worker serves: the credentials meshca
// would serve, read from the same seeded data directory, and a server
// certificate from the same CA with meshca's SPIFFE ID, so that the same
// clients connect to it in the same way.
type NaiveInput struct {
	ServerChainPEM string          `json:"server_chain_pem"`
	ServerKeyPEM   string          `json:"server_key_pem"`
	BundlePEM      string          `json:"bundle_pem"`
	Identities     []NaiveIdentity `json:"identities"`
}

// NaiveIdentity is one identity's certificate secret.
type NaiveIdentity struct {
	SPIFFEID string `json:"spiffe_id"`
	ChainPEM string `json:"chain_pem"`
	KeyPEM   string `json:"key_pem"`
}

// WriteNaiveInput reads what the naive-xds worker needs for nodes from a
// seeded data directory (or its store in etcd), which no server may have
// open, and writes it to
// path (0600: it holds keys).
func WriteNaiveInput(ctx context.Context, dataDir string, etcd EtcdTarget, nodes []SeedNode, path string) error {
	st, err := openStore(dataDir, etcd)
	if err != nil {
		return err
	}
	defer st.Close()
	td, err := identity.TrustDomain(TrustDomain)
	if err != nil {
		return err
	}
	auth, err := authority.New(ctx, authority.Config{Store: st, TrustDomain: td, Lifetimes: authority.Default()})
	if err != nil {
		return err
	}
	reg, err := registry.New(ctx, registry.Config{Store: st, TrustDomain: td, Issuer: auth, Lifetimes: authority.Default()})
	if err != nil {
		return err
	}
	sc, err := auth.ServerCert(nil, authority.Default().Server)
	if err != nil {
		return err
	}
	cert, err := sc.Get(nil)
	if err != nil {
		return fmt.Errorf("server certificate: %w", err)
	}
	in := NaiveInput{BundlePEM: string(auth.BundlePEM())}
	for _, der := range cert.Certificate {
		in.ServerChainPEM += string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cert.PrivateKey)
	if err != nil {
		return err
	}
	in.ServerKeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}))
	seen := map[string]bool{}
	for _, n := range nodes {
		if n.Identity == "" || seen[n.Identity] {
			continue
		}
		seen[n.Identity] = true
		_, creds, err := reg.NodeCredentials(ctx, n.Name)
		if err != nil {
			return err
		}
		for _, c := range creds {
			if c.SPIFFEID == n.Identity {
				in.Identities = append(in.Identities, NaiveIdentity{SPIFFEID: c.SPIFFEID, ChainPEM: string(c.ChainPEM), KeyPEM: string(c.KeyPEM)})
			}
		}
	}
	b, err := json.Marshal(in)
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o600)
}

// workNaiveXDS is the naive-xds worker: the baseline a control plane built
// the plain way on go-control-plane would give. One SnapshotCache (ads=false)
// with a snapshot per node holding the trust bundle secret and the node's
// identity secret, served over ADS and SDS with the same mTLS as meshca
// (client certificates required and verified against the bundle).
//
// Flags: -nodes FILE -input FILE (WriteNaiveInput). Two more try out
// designs on the same harness: -secrets linear serves every secret from one
// LinearCache shared by all nodes (secret names are unique per identity),
// so a new bundle is one UpdateResource; -read-buffer BYTES sets gRPC's
// per-connection read buffer (default 32 KiB) and shares write buffers.
//
// It prints "listening ADDR" once every node has its secrets. Then:
//
//	change  builds a trust bundle with one more root and publishes it: sets
//	        every node's snapshot, one node after another (or updates the
//	        one shared resource); prints "changed NS", the nanoseconds that
//	        took.
//	mem     prints "mem heap_inuse=B stack_inuse=B goroutines=N".
//
// Closing stdin stops it.
func workNaiveXDS(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("naive-xds", flag.ContinueOnError)
	nodesFile := fs.String("nodes", "", "nodes (WriteNodes JSON lines)")
	inputFile := fs.String("input", "", "credentials (WriteNaiveInput JSON)")
	layout := fs.String("secrets", "snapshot", "snapshot (one per node) or linear (one cache shared by all nodes)")
	readBuffer := fs.Int("read-buffer", 0, "gRPC read buffer per connection in bytes; 0 keeps gRPC's default")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *nodesFile == "" || *inputFile == "" {
		return errors.New("naive-xds: -nodes and -input are required")
	}
	nodes, err := ReadNodes(*nodesFile)
	if err != nil {
		return err
	}
	raw, err := os.ReadFile(*inputFile)
	if err != nil {
		return err
	}
	var input NaiveInput
	if err := json.Unmarshal(raw, &input); err != nil {
		return fmt.Errorf("%s: %w", *inputFile, err)
	}
	if err := raiseFileLimit(len(nodes) + 64); err != nil {
		return err
	}
	cert, err := tls.X509KeyPair([]byte(input.ServerChainPEM), []byte(input.ServerKeyPEM))
	if err != nil {
		return fmt.Errorf("server credentials: %w", err)
	}
	clientCAs := x509.NewCertPool()
	if !clientCAs.AppendCertsFromPEM([]byte(input.BundlePEM)) {
		return errors.New("naive-xds: empty bundle")
	}
	ids := map[string]types.Resource{}
	for _, id := range input.Identities {
		ids[id.SPIFFEID] = &tlsv3.Secret{Name: id.SPIFFEID, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inlineBytes([]byte(id.ChainPEM)), PrivateKey: inlineBytes([]byte(id.KeyPEM)),
		}}}
	}
	bundle := []byte(input.BundlePEM)
	var secrets naiveSecrets
	switch *layout {
	case "snapshot":
		secrets, err = newSnapshotSecrets(ctx, nodes, ids, bundle)
	case "linear":
		secrets = newLinearSecrets(ids, bundle)
	default:
		err = fmt.Errorf("naive-xds: -secrets %q: want snapshot or linear", *layout)
	}
	if err != nil {
		return err
	}

	ctx, cmds := commands(ctx, in)
	opts := []grpc.ServerOption{grpc.Creds(credentials.NewTLS(&tls.Config{
		MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: clientCAs,
	}))}
	if *readBuffer > 0 {
		opts = append(opts, grpc.ReadBufferSize(*readBuffer), grpc.SharedWriteBuffer(true))
	}
	srv := grpc.NewServer(opts...)
	xs := serverv3.NewServer(ctx, secrets.cache(), nil)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(srv, xs)
	secretservice.RegisterSecretDiscoveryServiceServer(srv, xs)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	go func() { _ = srv.Serve(ln) }()
	defer srv.Stop()
	w := &lines{w: out}
	w.Printf("listening %s", ln.Addr())
	for {
		select {
		case <-ctx.Done():
			return nil
		case cmd := <-cmds:
			switch cmd {
			case "change":
				root, err := newRootPEM()
				if err != nil {
					return err
				}
				bundle = append(append([]byte{}, bundle...), root...)
				start := time.Now()
				if err := secrets.publish(ctx, bundle); err != nil {
					w.Printf("error publish the bundle: %v", err)
					continue
				}
				w.Printf("changed %d", time.Since(start).Nanoseconds())
			case "mem":
				var ms runtime.MemStats
				runtime.ReadMemStats(&ms)
				w.Printf("mem heap_inuse=%d stack_inuse=%d goroutines=%d", ms.HeapInuse, ms.StackInuse, runtime.NumGoroutine())
			default:
				w.Printf("error unknown command %q", cmd)
			}
		}
	}
}

// naiveSecrets is how the naive server holds its secrets.
type naiveSecrets interface {
	cache() cachev3.Cache
	// publish serves a new trust bundle to every node.
	publish(ctx context.Context, bundlePEM []byte) error
}

// snapshotSecrets is a snapshot per node, set one node after another.
type snapshotSecrets struct {
	snaps   cachev3.SnapshotCache
	nodes   []SeedNode
	ids     map[string]types.Resource
	version int
}

func newSnapshotSecrets(ctx context.Context, nodes []SeedNode, ids map[string]types.Resource, bundlePEM []byte) (*snapshotSecrets, error) {
	s := &snapshotSecrets{snaps: cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil), nodes: nodes, ids: ids}
	return s, s.publish(ctx, bundlePEM)
}

func (s *snapshotSecrets) cache() cachev3.Cache { return s.snaps }

func (s *snapshotSecrets) publish(ctx context.Context, bundlePEM []byte) error {
	s.version++
	v := strconv.Itoa(s.version)
	b := bundleSecret(bundlePEM)
	for _, n := range s.nodes {
		secrets := []types.Resource{b}
		if id, ok := s.ids[n.Identity]; ok {
			secrets = append(secrets, id)
		}
		snap, err := cachev3.NewSnapshot(v, map[resource.Type][]types.Resource{resource.SecretType: secrets})
		if err != nil {
			return err
		}
		if err := s.snaps.SetSnapshot(ctx, n.Name, snap); err != nil {
			return err
		}
	}
	return nil
}

// linearSecrets is one cache of every secret, shared by all nodes.
type linearSecrets struct{ lin *cachev3.LinearCache }

func newLinearSecrets(ids map[string]types.Resource, bundlePEM []byte) *linearSecrets {
	all := maps.Clone(ids)
	all[BundleSecret] = bundleSecret(bundlePEM)
	return &linearSecrets{lin: cachev3.NewLinearCache(resource.SecretType, cachev3.WithInitialResources(all))}
}

func (s *linearSecrets) cache() cachev3.Cache { return s.lin }

func (s *linearSecrets) publish(_ context.Context, bundlePEM []byte) error {
	return s.lin.UpdateResource(BundleSecret, bundleSecret(bundlePEM))
}

func bundleSecret(bundlePEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: BundleSecret, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: inlineBytes(bundlePEM),
	}}}
}

func inlineBytes(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// newRootPEM makes a new self-signed root, as a root rotation would add.
func newRootPEM() ([]byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: "naive baseline root"},
		NotBefore: now.Add(-time.Minute), NotAfter: now.Add(365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), nil
}
