package nodeconfig

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshca/meshca/internal/store"
)

// keptPublisher keeps the secrets each node was last handed, by name.
type keptPublisher struct {
	*fakePublisher
	mu      sync.Mutex
	secrets map[string]map[string]types.Resource
}

func (p *keptPublisher) SetNode(ctx context.Context, node string, res map[string][]types.Resource, withdrawn []string) error {
	got := map[string]types.Resource{}
	for _, r := range res[resource.SecretType] {
		got[secretName(r)] = r
	}
	p.mu.Lock()
	p.secrets[node] = got
	p.mu.Unlock()
	return p.fakePublisher.SetNode(ctx, node, res, withdrawn)
}

func (p *keptPublisher) secret(node, name string) types.Resource {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.secrets[node][name]
}

// await takes the publisher's calls until ok holds (a node may be built
// once more than its changes, when a change arrives during its build).
func (p *keptPublisher) await(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for !ok() {
		select {
		case <-p.calls:
		case <-deadline:
			t.Fatalf("%s: not within 10s", what)
		}
	}
}

func secretName(r types.Resource) string {
	type named interface{ GetName() string }
	return r.(named).GetName()
}

// rekey gives identity name a new certificate and key, as its current one.
func rekey(t *testing.T, name string, serial int64) func(tx *store.Tx) error {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	hex := big.NewInt(serial).Text(16)
	return func(tx *store.Tx) error {
		if err := tx.PutCert(store.Cert{Serial: hex, Identity: name, DER: der, NotBefore: tmpl.NotBefore, NotAfter: tmpl.NotAfter, IssuedAt: now}, pkcs8); err != nil {
			return err
		}
		return tx.PutIdentity(store.Identity{Name: name, SPIFFEID: td.IDString() + "/" + name, State: store.StateActive, CurrentSerial: hex})
	}
}

// TestSecretsBuiltOncePerCertificate checks that an identity's secret is
// read from the store and built once per certificate, and that every node
// holding the identity is handed that same value, also when a node is
// rebuilt for another reason; a re-key builds a new one, shared again; a
// revocation withdraws it and drops it from memory.
func TestSecretsBuiltOncePerCertificate(t *testing.T) {
	f := newFixture(t, 0)
	pub := &keptPublisher{fakePublisher: f.pub, secrets: map[string]map[string]types.Resource{}}
	f.write(t, rekey(t, "web", 1))
	f.write(t, node("n1", "web"))
	f.write(t, node("n2", "web"))
	f.write(t, node("n3"))
	var err error
	f.b, err = New(Config{Store: f.st, TrustDomain: td, Trust: f.trust, Publisher: pub, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	f.b.dispatched = func(b store.Batch) { f.batch <- b }
	if err := f.b.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.pub.expect(t, "trust", "set n1", "set n2", "set n3")
	f.run(t)
	web := td.IDString() + "/web"
	first := pub.secret("n1", web)
	if first == nil || pub.secret("n2", web) != first {
		t.Fatalf("n1 and n2 were not handed one shared secret of web: %p, %p", first, pub.secret("n2", web))
	}
	if r := f.b.Stats().CredentialReads; r != 1 {
		t.Fatalf("web's credentials read %d times for two nodes, want 1", r)
	}

	// n1 rebuilt for a change of its own: nothing read, the same value.
	sets := f.pub.count("n1")
	f.handled(t, f.write(t, node("n1", "web")))
	pub.await(t, "n1 rebuilt", func() bool { return f.pub.count("n1") > sets })
	if pub.secret("n1", web) != first || f.b.Stats().CredentialReads != 1 {
		t.Fatalf("a rebuild of n1 read web's credentials again (%d reads) or built another secret", f.b.Stats().CredentialReads)
	}

	// A re-key: one read, one new value shared by both holders.
	f.handled(t, f.write(t, rekey(t, "web", 2)))
	pub.await(t, "the re-key", func() bool {
		s1, s2 := pub.secret("n1", web), pub.secret("n2", web)
		return s1 != first && s2 != first
	})
	second := pub.secret("n1", web)
	if second == nil || pub.secret("n2", web) != second {
		t.Fatalf("after the re-key: n1 %p, n2 %p, before %p", second, pub.secret("n2", web), first)
	}
	if r := f.b.Stats().CredentialReads; r != 2 {
		t.Fatalf("%d credential reads after one re-key, want 2", r)
	}

	// A revocation: withdrawn, and no key left in the cache.
	f.handled(t, f.write(t, ident("web", store.StateRevoked)))
	pub.await(t, "the revocation", func() bool { return pub.secret("n1", web) == nil && pub.secret("n2", web) == nil })
	if n := f.b.secrets.len(); n != 0 {
		t.Fatalf("%d secrets cached after the only identity was revoked", n)
	}
	t.Logf("2 nodes, 1 identity, 1 unrelated rebuild, 1 re-key: %d credential reads", f.b.Stats().CredentialReads)
}
