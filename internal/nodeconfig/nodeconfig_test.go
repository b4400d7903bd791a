package nodeconfig

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

var td = spiffeid.RequireTrustDomainFromString("mesh.local")

// fakePublisher records what it is handed. gate, when set, holds SetNode
// of that node until it is closed.
type fakePublisher struct {
	mu      sync.Mutex
	sets    map[string]int
	removed []string
	trusts  []types.Resource
	last    map[string][]string // node -> withdrawn
	calls   chan string
	gate    map[string]chan struct{}
}

func newFakePublisher() *fakePublisher {
	return &fakePublisher{sets: map[string]int{}, last: map[string][]string{}, calls: make(chan string, 1000), gate: map[string]chan struct{}{}}
}

func (p *fakePublisher) SetNode(_ context.Context, node string, res map[string][]types.Resource, withdrawn []string) error {
	p.mu.Lock()
	g := p.gate[node]
	p.mu.Unlock()
	if g != nil {
		p.calls <- "building " + node
		<-g
	}
	p.mu.Lock()
	p.sets[node]++
	p.last[node] = withdrawn
	p.mu.Unlock()
	p.calls <- "set " + node
	return nil
}

func (p *fakePublisher) RemoveNode(node string) {
	p.mu.Lock()
	p.removed = append(p.removed, node)
	p.mu.Unlock()
	p.calls <- "remove " + node
}

func (p *fakePublisher) SetTrust(_ context.Context, bundle types.Resource) error {
	p.mu.Lock()
	p.trusts = append(p.trusts, bundle)
	p.mu.Unlock()
	p.calls <- "trust"
	return nil
}

func (p *fakePublisher) count(node string) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.sets[node]
}

// expect waits for the next call to be want.
func (p *fakePublisher) expect(t *testing.T, want ...string) {
	t.Helper()
	var got []string
	for len(got) < len(want) {
		select {
		case c := <-p.calls:
			got = append(got, c)
		case <-time.After(10 * time.Second):
			t.Fatalf("got calls %v, want %v", got, want)
		}
	}
	slices.Sort(got)
	w := slices.Clone(want)
	slices.Sort(w)
	if !slices.Equal(got, w) {
		t.Fatalf("got calls %v, want %v", got, want)
	}
}

// quiet checks that no call comes once every batch was handled.
func (p *fakePublisher) quiet(t *testing.T) {
	t.Helper()
	select {
	case c := <-p.calls:
		t.Fatalf("unexpected call %q", c)
	default:
	}
}

type fakeTrust struct {
	mu     sync.Mutex
	bundle []byte
}

func (f *fakeTrust) Trust(context.Context) (bundle, crl []byte, err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bundle, nil, nil
}
func (f *fakeTrust) set(b []byte) { f.mu.Lock(); f.bundle = b; f.mu.Unlock() }
func (f *fakeTrust) bundlePEM() []byte {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.bundle
}

func rootPEM(t *testing.T, cn string) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

type fixture struct {
	st    *store.Store
	pub   *fakePublisher
	trust *fakeTrust
	b     *Builder
	batch chan store.Batch
	limit int
}

func newFixture(t *testing.T, limit int) *fixture {
	t.Helper()
	sealer, err := seal.New(bytes.Repeat([]byte{9}, seal.KeySize))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(store.Config{Dir: filepath.Join(t.TempDir(), "data"), Sealer: sealer})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return &fixture{st: st, limit: limit, pub: newFakePublisher(), trust: &fakeTrust{bundle: rootPEM(t, "root-1")}, batch: make(chan store.Batch, 100)}
}

// sync starts the Builder on what the store holds now, as meshca starts.
func (f *fixture) sync(t *testing.T) {
	t.Helper()
	var err error
	f.b, err = New(Config{Store: f.st, TrustDomain: td, Trust: f.trust, Publisher: f.pub, Workers: 2, FeedLimit: f.limit})
	if err != nil {
		t.Fatal(err)
	}
	f.b.dispatched = func(b store.Batch) { f.batch <- b }
	if err := f.b.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (f *fixture) run(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- f.b.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
}

func (f *fixture) write(t *testing.T, fn func(tx *store.Tx) error) uint64 {
	t.Helper()
	var seq uint64
	err := f.st.Update(context.Background(), func(tx *store.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		ev, err := tx.Append(store.Event{Action: "test"})
		seq = ev.Seq
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return seq
}

// handled waits until the Builder has queued everything up to seq.
func (f *fixture) handled(t *testing.T, seq uint64) {
	t.Helper()
	for {
		select {
		case b := <-f.batch:
			if b.Seq >= seq {
				return
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("change %d not handled", seq)
		}
	}
}

func node(name string, ids ...string) func(tx *store.Tx) error {
	return func(tx *store.Tx) error {
		return tx.PutNode(store.Node{Name: name, Kind: "sidecar", State: store.StateActive, Identities: ids})
	}
}

func ident(name, state string) func(tx *store.Tx) error {
	return func(tx *store.Tx) error {
		return tx.PutIdentity(store.Identity{Name: name, SPIFFEID: td.IDString() + "/" + name, State: state})
	}
}

// TestSyncPublishesEveryNode checks that Sync hands over the trust bundle
// first, then every active node, and removes a revoked one.
func TestSyncPublishesEveryNode(t *testing.T) {
	f := newFixture(t, 0)
	f.write(t, node("n1", "web"))
	f.write(t, node("n2", "api"))
	f.write(t, func(tx *store.Tx) error {
		return tx.PutNode(store.Node{Name: "gone", State: store.StateRevoked})
	})
	f.sync(t)
	if c := <-f.pub.calls; c != "trust" {
		t.Fatalf("first call %q, want the trust bundle", c)
	}
	f.pub.expect(t, "set n1", "set n2", "remove gone")
	if got := f.b.Holders("web"); !slices.Equal(got, []string{"n1"}) {
		t.Fatalf("holders of web: %v", got)
	}
}

// TestIdentityChangeReachesItsHolders checks that an identity's change
// rebuilds exactly the nodes it is assigned to, as the store says, also
// after an assignment changed.
func TestIdentityChangeReachesItsHolders(t *testing.T) {
	f := newFixture(t, 0)
	f.write(t, node("n1", "web"))
	f.write(t, node("n2", "api"))
	f.write(t, node("n3", "web", "api"))
	f.sync(t)
	f.pub.expect(t, "trust", "set n1", "set n2", "set n3")
	f.run(t)

	f.handled(t, f.write(t, ident("web", store.StateActive)))
	f.pub.expect(t, "set n1", "set n3")
	f.pub.quiet(t)

	f.handled(t, f.write(t, node("n2", "api", "web"))) // n2 now holds web
	f.pub.expect(t, "set n2")
	f.handled(t, f.write(t, ident("web", store.StateRevoked)))
	f.pub.expect(t, "set n1", "set n2", "set n3")
	f.pub.mu.Lock()
	withdrawn := f.pub.last["n2"]
	f.pub.mu.Unlock()
	if !slices.Equal(withdrawn, []string{td.IDString() + "/web"}) {
		t.Fatalf("n2's withdrawn secrets: %v", withdrawn)
	}
	f.handled(t, f.write(t, func(tx *store.Tx) error { return tx.DeleteNode("n1") }))
	f.pub.expect(t, "remove n1")
	f.handled(t, f.write(t, ident("web", store.StateActive)))
	f.pub.expect(t, "set n2", "set n3")
	f.pub.quiet(t)
}

// TestNodeBuildsCoalesce checks that a node changed ten times while its
// build is running is built once more, not ten times.
func TestNodeBuildsCoalesce(t *testing.T) {
	f := newFixture(t, 0)
	f.write(t, node("n1"))
	f.sync(t)
	f.pub.expect(t, "trust", "set n1")
	gate := make(chan struct{})
	f.pub.mu.Lock()
	f.pub.gate["n1"] = gate
	f.pub.mu.Unlock()
	f.run(t)
	f.write(t, node("n1", "a"))
	f.pub.expect(t, "building n1")
	var last uint64
	for i := range 10 {
		last = f.write(t, node("n1", fmt.Sprintf("id%d", i)))
	}
	f.handled(t, last)
	f.pub.mu.Lock()
	delete(f.pub.gate, "n1")
	f.pub.mu.Unlock()
	close(gate)
	f.pub.expect(t, "set n1", "set n1")
	f.handled(t, f.write(t, ident("unrelated", store.StateActive)))
	f.pub.quiet(t)
	if got := f.pub.count("n1"); got != 3 {
		t.Fatalf("n1 published %d times, want 3 (sync, the running build, one for ten changes)", got)
	}
	t.Logf("10 changes during one build: 1 more build")
}

// TestTrustChangeSwapsBundle checks that a committed trust change (a new
// CRL record) hands a new bundle over once, and that an unchanged bundle is
// not handed again.
func TestTrustChangeSwapsBundle(t *testing.T) {
	f := newFixture(t, 0)
	f.sync(t)
	f.pub.expect(t, "trust")
	f.run(t)
	f.trust.set(rootPEM(t, "root-2"))
	f.write(t, func(tx *store.Tx) error { return tx.PutCRL(store.CRL{Number: 1}) })
	f.pub.expect(t, "trust")
	f.write(t, func(tx *store.Tx) error { return tx.PutCRL(store.CRL{Number: 2}) }) // nothing changed
	f.handled(t, f.write(t, ident("x", store.StateActive)))
	f.handled(t, f.write(t, ident("y", store.StateActive)))
	f.pub.quiet(t)
	f.pub.mu.Lock()
	n := len(f.pub.trusts)
	f.pub.mu.Unlock()
	if n != 2 {
		t.Fatalf("trust handed over %d times, want 2", n)
	}
}

// TestOverflowResyncs checks that when the feed overflowed, every node is
// rebuilt and a node deleted meanwhile is removed.
func TestOverflowResyncs(t *testing.T) {
	f := newFixture(t, 2)
	f.write(t, node("n1"))
	f.write(t, node("n2"))
	f.sync(t)
	f.pub.expect(t, "trust", "set n1", "set n2")
	// Before Run: the subscription fills up and overflows.
	f.write(t, func(tx *store.Tx) error { return tx.DeleteNode("n2") })
	f.write(t, node("n3"))
	last := f.write(t, ident("a", store.StateActive))
	f.run(t)
	f.handled(t, last)
	f.pub.expect(t, "set n1", "remove n2", "set n3")
	if s := f.b.Stats(); s.Resyncs != 1 {
		t.Fatalf("resyncs = %d, want 1", s.Resyncs)
	}
}
