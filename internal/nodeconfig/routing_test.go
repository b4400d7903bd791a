package nodeconfig

import (
	"context"
	"sync"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshca/meshca/internal/store"
)

// routesPublisher keeps the resources other than secrets each node was
// last handed.
type routesPublisher struct {
	*fakePublisher
	mu     sync.Mutex
	routes map[string][]types.Resource
}

func (p *routesPublisher) SetNode(ctx context.Context, node string, res map[string][]types.Resource, withdrawn []string) error {
	var got []types.Resource
	for t, rs := range res {
		if t != resource.SecretType {
			got = append(got, rs...)
		}
	}
	p.mu.Lock()
	p.routes[node] = got
	p.mu.Unlock()
	return p.fakePublisher.SetNode(ctx, node, res, withdrawn)
}

// same reports whether node was handed exactly the values in rs, and how
// many it was handed.
func (p *routesPublisher) same(node string, rs []types.Resource) (bool, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	cur := p.routes[node]
	if len(cur) != len(rs) {
		return false, len(cur)
	}
	was := map[types.Resource]bool{}
	for _, r := range rs {
		was[r] = true
	}
	for _, r := range cur {
		if !was[r] {
			return false, len(cur)
		}
	}
	return true, len(cur)
}

const routingMesh = `
version: 1
services:
  - name: web
    identity: web
    endpoints: [{address: 10.0.0.1, port: 8080}]
routes:
  - name: web
    domains: ["*"]
    rules:
      - weighted: [{service: web, weight: 1}]
front_proxy:
  identity: front
  https: {route: web}
`

// frontProxy records a front-proxy node holding ids.
func frontProxy(name string, ids ...string) func(tx *store.Tx) error {
	return func(tx *store.Tx) error {
		return tx.PutNode(store.Node{Name: name, Kind: "front-proxy", State: store.StateActive, Identities: ids})
	}
}

// TestRoutingKeptWhileItsInputsStay: a re-key changes a node's secrets
// only, and the node is handed the same listener, route, cluster and
// endpoint values as before (which the xDS server then does not encode
// again); a new mesh version or a new assignment builds them anew.
func TestRoutingKeptWhileItsInputsStay(t *testing.T) {
	f := newFixture(t, 0)
	pub := &routesPublisher{fakePublisher: f.pub, routes: map[string][]types.Resource{}}
	calls := &keptPublisher{fakePublisher: f.pub} // for await
	f.write(t, rekey(t, "front", 1))
	f.write(t, rekey(t, "web", 2))
	f.write(t, func(tx *store.Tx) error { _, err := tx.AppendMesh([]byte(routingMesh), "test"); return err })
	f.write(t, frontProxy("n1", "front"))
	var err error
	f.b, err = New(Config{Store: f.st, TrustDomain: td, Trust: f.trust, Publisher: pub, Workers: 1})
	if err != nil {
		t.Fatal(err)
	}
	f.b.dispatched = func(b store.Batch) { f.batch <- b }
	if err := f.b.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	f.run(t)
	pub.mu.Lock()
	first := pub.routes["n1"]
	pub.mu.Unlock()
	if len(first) == 0 {
		t.Fatal("n1 was handed no listeners, routes or clusters")
	}

	// A re-key of front: the same values.
	sets := f.pub.count("n1")
	f.handled(t, f.write(t, rekey(t, "front", 3)))
	calls.await(t, "the re-key", func() bool { return f.pub.count("n1") > sets })
	if same, n := pub.same("n1", first); !same {
		t.Fatalf("after a re-key n1 was handed %d new routing values (had %d)", n, len(first))
	}
	if k := f.b.Stats().RoutingKept; k < 1 {
		t.Fatalf("RoutingKept = %d after a re-key", k)
	}

	// A new mesh version, even with the same document: built anew.
	sets = f.pub.count("n1")
	f.handled(t, f.write(t, func(tx *store.Tx) error { _, err := tx.AppendMesh([]byte(routingMesh), "test"); return err }))
	calls.await(t, "the mesh change", func() bool { return f.pub.count("n1") > sets })
	if same, _ := pub.same("n1", first); same {
		t.Fatal("a new mesh version handed n1 the values built for the previous one")
	}
	pub.mu.Lock()
	second := pub.routes["n1"]
	pub.mu.Unlock()

	// n1 now also holds web: built anew, for both identities.
	sets = f.pub.count("n1")
	f.handled(t, f.write(t, frontProxy("n1", "front", "web")))
	calls.await(t, "the assignment", func() bool { return f.pub.count("n1") > sets })
	if same, n := pub.same("n1", second); same {
		t.Fatalf("a new assignment handed n1 the same %d values", n)
	}
	t.Logf("routing values of n1: %d, kept across %d build(s)", len(first), f.b.Stats().RoutingKept)
}
