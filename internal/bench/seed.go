package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// TrustDomain is the trust domain of every seeded data directory (meshca's
// default).
const TrustDomain = "mesh.local"

// Seed describes what to put in a data directory before meshca starts.
type Seed struct {
	// Identities is how many identities (each with its certificate) to
	// add: id-0, id-1, ...
	Identities int
	// Nodes is how many sidecar nodes to add and join: node-0, node-1, ...
	// Node i is assigned identity id-(i mod Identities) when there are
	// identities.
	Nodes int
	// Workers is how many callers add at once; default 64.
	Workers int
	// Etcd, when it names endpoints, keeps the state in etcd under its
	// prefix; the data directory then holds only the key-encryption key,
	// which every replica needs a copy of.
	Etcd EtcdTarget
}

// SeedNode is a joined node's credentials, as its proxy would hold them.
type SeedNode struct {
	Name     string `json:"name"`
	Identity string `json:"identity,omitempty"` // the SPIFFE ID assigned, if any
	ChainPEM string `json:"chain_pem"`
	KeyPEM   string `json:"key_pem"`
}

// Seeded is what Seed wrote.
type Seeded struct {
	Nodes     []SeedNode
	BundlePEM []byte
}

// SeedDir fills dataDir (created if missing) through meshca's own registry,
// exactly as the admin API would, then closes it so a server can open it.
func SeedDir(ctx context.Context, dataDir string, s Seed) (*Seeded, error) {
	if s.Workers <= 0 {
		s.Workers = 64
	}
	reg, auth, closeStore, err := openRegistry(ctx, dataDir, false, s.Etcd)
	if err != nil {
		return nil, err
	}
	defer closeStore()
	out := &Seeded{Nodes: make([]SeedNode, s.Nodes), BundlePEM: auth.BundlePEM()}
	err = parallel(ctx, s.Identities, s.Workers, func(i int) error {
		_, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: fmt.Sprintf("id-%d", i)}, "bench")
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("seed identities: %w", err)
	}
	err = parallel(ctx, s.Nodes, s.Workers, func(i int) error {
		n := SeedNode{Name: fmt.Sprintf("node-%d", i)}
		req := registry.AddNode{Name: n.Name}
		if s.Identities > 0 {
			name := fmt.Sprintf("id-%d", i%s.Identities)
			req.Identities = []string{name}
			n.Identity = "spiffe://" + TrustDomain + "/" + name
		}
		_, tok, err := reg.AddNode(ctx, req, "bench")
		if err != nil {
			return err
		}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
		if err != nil {
			return err
		}
		joined, err := reg.Join(ctx, n.Name, tok.Token, csr, "bench")
		if err != nil {
			return err
		}
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return err
		}
		n.ChainPEM = string(joined.ChainPEM)
		n.KeyPEM = string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}))
		out.Nodes[i] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("seed nodes: %w", err)
	}
	return out, nil
}

// openRegistry opens (creating if needed) a data directory, or with etcd
// endpoints the store in etcd sealed with the directory's key-encryption
// key, the way meshca server does, with the default configuration, and
// returns its registry, its authority and the function that closes the
// store.
func openRegistry(ctx context.Context, dataDir string, lintBeforeSigning bool, etcd EtcdTarget) (*registry.Registry, *authority.Authority, func() error, error) {
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, nil, nil, err
	}
	st, err := openStore(dataDir, etcd)
	if err != nil {
		return nil, nil, nil, err
	}
	td, err := identity.TrustDomain(TrustDomain)
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	auth, err := authority.New(ctx, authority.Config{
		Store: st, TrustDomain: td, Lifetimes: authority.Default(), LintBeforeSigning: lintBeforeSigning,
	})
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	reg, err := registry.New(ctx, registry.Config{Store: st, TrustDomain: td, Issuer: auth, Lifetimes: authority.Default()})
	if err != nil {
		st.Close()
		return nil, nil, nil, err
	}
	return reg, auth, st.Close, nil
}

// openStore opens the store of dataDir, or with etcd endpoints the one in
// etcd sealed with dataDir's key-encryption key (created if missing).
func openStore(dataDir string, etcd EtcdTarget) (*store.Store, error) {
	sealer, err := seal.LoadOrCreate(filepath.Join(dataDir, app.KEKFile))
	if err != nil {
		return nil, err
	}
	if len(etcd.Endpoints) > 0 {
		return store.OpenEtcd(store.EtcdConfig{Endpoints: etcd.Endpoints, Prefix: etcd.Prefix, Sealer: sealer})
	}
	return store.Open(store.Config{Dir: dataDir, Sealer: sealer})
}

// WriteNodes writes nodes as JSON lines (one SeedNode each) for a worker.
func WriteNodes(path string, nodes []SeedNode) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	enc := json.NewEncoder(f)
	for _, n := range nodes {
		if err := enc.Encode(n); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// ReadNodes reads what WriteNodes wrote.
func ReadNodes(path string) ([]SeedNode, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var nodes []SeedNode
	dec := json.NewDecoder(f)
	for dec.More() {
		var n SeedNode
		if err := dec.Decode(&n); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		nodes = append(nodes, n)
	}
	return nodes, nil
}

// parallel runs op(0..n-1) on workers goroutines and returns the first
// error; it stops handing out work after one.
func parallel(ctx context.Context, n, workers int, op func(i int) error) error {
	var (
		next    atomic.Int64
		wg      sync.WaitGroup
		errOnce sync.Once
		first   error
		failed  atomic.Bool
	)
	for w := 0; w < min(workers, n); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !failed.Load() && ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := op(i); err != nil {
					errOnce.Do(func() { first = err })
					failed.Store(true)
					return
				}
			}
		}()
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return first
}
