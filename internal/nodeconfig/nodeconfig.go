package nodeconfig

import (
	"context"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/mesh"
	"github.com/meshca/meshca/sds"
)

// Publisher takes complete snapshots; the xDS server implements it. It must
// never call back into the Builder.
type Publisher interface {
	// SetNode publishes everything node receives except the trust bundle
	// (by type URL), and names the secrets it lost.
	SetNode(ctx context.Context, node string, res map[string][]types.Resource, withdrawn []string) error
	// RemoveNode forgets a node that may no longer connect and closes its
	// streams.
	RemoveNode(node string)
	// SetTrust gives every node the trust-bundle secret.
	SetTrust(ctx context.Context, bundle types.Resource) error
}

// Trust reads the trust material from the store: the bundle of roots of
// the CA set and the CRLs, as PEM (crl nil when nothing is revoked). Both
// change only by commits (store.KindCA, store.KindCRL), read in one View.
type Trust interface {
	Trust(ctx context.Context) (bundle, crl []byte, err error)
}

// Log attribute keys.
const (
	logNode = "node"
	logErr  = "err"
)

// Config configures a Builder.
type Config struct {
	Store       *store.Store         // required
	TrustDomain spiffeid.TrustDomain // required
	Trust       Trust                // required
	Publisher   Publisher            // required
	// Acks, when set, lets WaitPushed tell which nodes acknowledged what
	// they were handed.
	Acks Acks
	// Workers build nodes in parallel (default GOMAXPROCS).
	Workers int
	// FeedLimit bounds the feed subscription (default
	// store.DefaultFeedLimit); beyond it the Builder resyncs.
	FeedLimit int
	Clock     clock.Clock
	Logger    *slog.Logger
}

// Builder turns the change feed into snapshots. Start it with Sync, then
// Run.
type Builder struct {
	cfg Config
	log *slog.Logger
	sub *store.Subscription

	mesh      atomic.Pointer[meshVersion]
	secrets   secretCache
	issuers   *sds.IssuerCache // the parsed issuers of the certificates secrets carry
	nodes     queue
	trustWake chan struct{}
	trustPEM  struct{ bundle, crl []byte } // owned by the trust loop

	mu       sync.Mutex
	progress progress
	holders  map[string]map[string]bool // identity -> nodes assigned it
	assigns  map[string][]string        // node -> identities
	known    map[string]bool            // nodes published and not removed
	routes   sync.Map                   // node -> *routed, what it was sent last besides secrets

	stats struct{ builds, removes, trusts, resyncs, failures, reads, routesKept atomic.Int64 }

	dispatched func(store.Batch) // testing: called after each batch is queued
}

type meshVersion struct {
	version uint64
	m       *mesh.Mesh
}

// New validates cfg and subscribes to the store's feed: every change
// committed from now on is seen.
func New(cfg Config) (*Builder, error) {
	if cfg.Store == nil || cfg.Trust == nil || cfg.Publisher == nil || cfg.TrustDomain.IsZero() {
		return nil, errors.New("nodeconfig: Store, TrustDomain, Trust and Publisher are required")
	}
	if cfg.Workers <= 0 {
		cfg.Workers = runtime.GOMAXPROCS(0)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	b := &Builder{cfg: cfg, log: cfg.Logger, trustWake: make(chan struct{}, 1),
		holders: map[string]map[string]bool{}, assigns: map[string][]string{}, known: map[string]bool{}}
	b.progress.init()
	b.nodes.init()
	b.secrets.init()
	b.issuers = sds.NewIssuerCache(0)
	b.sub = cfg.Store.Subscribe(cfg.FeedLimit)
	b.progress.dispatched = cfg.Store.FeedPos()
	return b, nil
}

// Sync publishes the trust bundle and every node's snapshot before it
// returns, so that a node has a snapshot before its first request (without
// one its watches would hang silently). Call it once, before Run.
func (b *Builder) Sync(ctx context.Context) error {
	if err := b.publishTrust(ctx); err != nil {
		return err
	}
	if err := b.loadMesh(ctx); err != nil {
		return err
	}
	names, err := b.reindex(ctx)
	if err != nil {
		return err
	}
	var (
		mu   sync.Mutex
		errs []error
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for range min(len(names), b.cfg.Workers) {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= len(names) {
					return
				}
				if err := b.build(ctx, names[i]); err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Run follows the feed until ctx ends, with Workers goroutines building
// nodes and one swapping the trust bundle. It returns nil when ctx ends.
func (b *Builder) Run(ctx context.Context) error {
	defer b.sub.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for range b.cfg.Workers {
		wg.Go(func() { b.work(ctx) })
	}
	wg.Go(func() { b.trustLoop(ctx) })
	for {
		batch, err := b.sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nodeconfig: feed: %w", err)
		}
		if err := b.dispatch(ctx, batch); err != nil {
			b.stats.failures.Add(1)
			if ctx.Err() != nil {
				return nil
			}
			// The store could not be read: rebuild everything rather than
			// lose the change.
			b.log.Error("change not resolved to nodes; rebuilding every node", logErr, err)
			if err := b.dispatch(ctx, store.Batch{Seq: batch.Seq, Pos: batch.Pos, Resync: true}); err != nil && ctx.Err() == nil {
				b.log.Error("resync failed; nodes are rebuilt on their next change", logErr, err)
			}
		}
		if b.dispatched != nil {
			b.dispatched(batch)
		}
	}
}

// dispatch works out which nodes a batch affects and queues them.
func (b *Builder) dispatch(ctx context.Context, batch store.Batch) error {
	if batch.Resync {
		b.stats.resyncs.Add(1)
		b.wakeTrust()
		if err := b.loadMesh(ctx); err != nil {
			return err
		}
		names, err := b.reindex(ctx)
		if err != nil {
			return err
		}
		b.mu.Lock()
		for n := range b.known {
			if !slices.Contains(names, n) {
				names = append(names, n) // gone from the store: removed by its build
			}
		}
		b.mu.Unlock()
		b.queued(batch.Pos, names, true)
		return nil
	}
	var (
		nodes      []string
		identities []string
		all, trust bool
	)
	for _, c := range batch.Changes {
		switch c.Kind {
		case store.KindNode:
			nodes = append(nodes, c.Key)
		case store.KindIdentity, store.KindCert, store.KindRevocation:
			identities = append(identities, c.Identity)
		case store.KindMesh:
			all = true
		case store.KindCA, store.KindCRL:
			trust = true
		}
	}
	if len(nodes) > 0 {
		if err := b.updateIndex(ctx, nodes); err != nil {
			return err
		}
	}
	if all {
		if err := b.loadMesh(ctx); err != nil {
			return err
		}
		b.mu.Lock()
		for n := range b.assigns {
			nodes = append(nodes, n)
		}
		b.mu.Unlock()
	}
	b.mu.Lock()
	for _, id := range identities {
		for n := range b.holders[id] {
			nodes = append(nodes, n)
		}
	}
	b.mu.Unlock()
	b.queued(batch.Pos, nodes, trust)
	return nil
}

// queued records that the changes up to feed position pos affect nodes
// (and the trust bundle), then queues them.
func (b *Builder) queued(seq uint64, nodes []string, trust bool) {
	b.mu.Lock()
	for _, n := range nodes {
		b.progress.want[n] = seq
	}
	if trust {
		b.progress.trustWant = seq
	}
	b.progress.dispatched = max(b.progress.dispatched, seq)
	b.progress.signalLocked()
	b.mu.Unlock()
	if trust {
		b.wakeTrust()
	}
	for _, n := range nodes {
		b.nodes.add(n)
	}
}

// reindex reads every node's assignments and returns the names of all
// nodes in the store.
func (b *Builder) reindex(ctx context.Context) ([]string, error) {
	var ns []store.Node
	err := b.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		ns, err = tx.Nodes()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("nodeconfig: list nodes: %w", err)
	}
	names := make([]string, 0, len(ns))
	b.mu.Lock()
	defer b.mu.Unlock()
	b.holders, b.assigns = map[string]map[string]bool{}, map[string][]string{}
	for _, n := range ns {
		names = append(names, n.Name)
		b.assignLocked(n.Name, n.Identities)
	}
	return names, nil
}

// updateIndex re-reads the assignments of the given nodes.
func (b *Builder) updateIndex(ctx context.Context, nodes []string) error {
	current := make(map[string][]string, len(nodes))
	err := b.cfg.Store.View(ctx, func(tx *store.Tx) error {
		for _, name := range nodes {
			n, err := tx.Node(name)
			if errors.Is(err, store.ErrNotFound) {
				current[name] = nil
				continue
			}
			if err != nil {
				return err
			}
			current[name] = n.Identities
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("nodeconfig: read nodes: %w", err)
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for name, ids := range current {
		for _, id := range b.assigns[name] {
			delete(b.holders[id], name)
			if len(b.holders[id]) == 0 {
				delete(b.holders, id)
			}
		}
		delete(b.assigns, name)
		b.assignLocked(name, ids)
	}
	return nil
}

func (b *Builder) assignLocked(node string, ids []string) {
	b.assigns[node] = slices.Clone(ids)
	for _, id := range ids {
		if b.holders[id] == nil {
			b.holders[id] = map[string]bool{}
		}
		b.holders[id][node] = true
	}
}

// Holders returns the nodes identity is assigned to, as last read from the
// store.
func (b *Builder) Holders(identity string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	out := make([]string, 0, len(b.holders[identity]))
	for n := range b.holders[identity] {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

// loadMesh reads the newest mesh version if it is not the one in use.
func (b *Builder) loadMesh(ctx context.Context) error {
	var m store.Mesh
	err := b.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		m, err = tx.LatestMesh()
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("nodeconfig: read mesh: %w", err)
	}
	if cur := b.mesh.Load(); cur != nil && cur.version == m.Version {
		return nil
	}
	parsed, err := mesh.Parse(m.Document, b.cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("nodeconfig: stored mesh version %d no longer parses: %w", m.Version, err)
	}
	b.mesh.Store(&meshVersion{version: m.Version, m: parsed})
	return nil
}

func (b *Builder) work(ctx context.Context) {
	for {
		node, ok := b.nodes.take(ctx)
		if !ok {
			return
		}
		b.mu.Lock()
		seq := b.progress.want[node]
		b.mu.Unlock()
		if err := b.build(ctx, node); err != nil {
			if ctx.Err() == nil {
				b.log.Error("node configuration not published; the node keeps its last one", logNode, node, logErr, err)
			}
		} else {
			b.mu.Lock()
			b.progress.built[node] = max(b.progress.built[node], seq)
			b.progress.signalLocked()
			b.mu.Unlock()
		}
		b.nodes.done(node)
	}
}

// credential is one identity's certificate and key as a node receives it.
type credential struct {
	identity, spiffeID, serial string
	notAfter                   time.Time
	// chain (DER, the leaf first) and key (PKCS#8 DER) are what the
	// store holds; sds packs them into the secret.
	chain [][]byte
	key   []byte
}

// build reads node from the store and publishes what it receives, or
// removes it when it is gone or revoked. An identity whose certificate is
// the one cached is not read again: its secret is the cached value.
func (b *Builder) build(ctx context.Context, node string) error {
	var (
		n         store.Node
		secrets   []types.Resource
		fresh     []credential // read from the store: secrets still to build
		withdrawn []string
		active    bool
	)
	now := b.cfg.Clock.Now()
	err := b.cfg.Store.View(ctx, func(tx *store.Tx) error {
		secrets, fresh, withdrawn, active = nil, nil, nil, false
		var err error
		if n, err = tx.Node(node); errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		if n.State != store.StateActive {
			return nil
		}
		active = true
		for _, name := range n.Identities {
			id, err := tx.Identity(name)
			if errors.Is(err, store.ErrNotFound) {
				b.secrets.forget(name)
				continue
			} else if err != nil {
				// A failed read must not send the node fewer secrets.
				return fmt.Errorf("identity %q: %w", name, err)
			}
			if id.State == store.StateRevoked || id.Admin || n.Agent {
				withdrawn = append(withdrawn, id.SPIFFEID)
			}
			if n.Agent {
				// An agent node makes its identities' keys: meshca never
				// sends it one, and answers its requests with nothing.
				continue
			}
			if id.State != store.StateActive || id.CurrentSerial == "" {
				b.secrets.forget(name)
				continue
			}
			if id.Admin {
				// Only a store written before admin identities were kept
				// from nodes can hold this assignment: serve nothing.
				b.log.Error("not serving an admin identity to a node; unassign it", "identity", name, logNode, node)
				continue
			}
			hit, cached := b.secrets.get(name, id.SPIFFEID, id.CurrentSerial)
			c := hit.credential
			if !cached {
				b.stats.reads.Add(1)
				if c, err = readCredential(tx, id); err != nil {
					return fmt.Errorf("identity %q: %w", name, err)
				}
				if c.key == nil {
					continue
				}
			}
			if !now.Before(c.notAfter) {
				// Never serve an expired certificate as if it were fine;
				// the rotation loop alarms long before this.
				b.log.Error("not serving an expired certificate", "identity", name, "serial", c.serial, "not_after", c.notAfter)
				continue
			}
			if cached {
				secrets = append(secrets, hit.secret)
			} else {
				fresh = append(fresh, c)
			}
		}
		return nil
	})
	if err != nil {
		b.stats.failures.Add(1)
		return fmt.Errorf("nodeconfig: read node %q: %w", node, err)
	}
	if !active {
		b.cfg.Publisher.RemoveNode(node)
		b.mu.Lock()
		delete(b.known, node)
		b.mu.Unlock()
		b.routes.Delete(node)
		b.stats.removes.Add(1)
		return nil
	}
	for _, c := range fresh {
		s, err := sds.TLSSecretDER(c.spiffeID, c.chain, c.key, b.issuers)
		if err != nil {
			b.stats.failures.Add(1)
			return fmt.Errorf("nodeconfig: secret of identity %q: %w", c.identity, err)
		}
		b.secrets.put(c, s)
		secrets = append(secrets, s)
	}
	out := map[string][]types.Resource{resource.SecretType: secrets}
	routing, err := b.routing(n)
	if err != nil {
		// Apply and assignment changes are checked against the mesh, so
		// this means a bug or a stored mesh that no longer fits: keep the
		// node's last good snapshot rather than withdraw its listeners.
		b.stats.failures.Add(1)
		return fmt.Errorf("nodeconfig: mesh configuration of node %q: %w", node, err)
	}
	for typeURL, rs := range routing {
		out[typeURL] = append(out[typeURL], rs...)
	}
	if err := b.cfg.Publisher.SetNode(ctx, node, out, withdrawn); err != nil {
		b.stats.failures.Add(1)
		return err
	}
	b.mu.Lock()
	b.known[node] = true
	b.mu.Unlock()
	b.stats.builds.Add(1)
	return nil
}

// routed is a node's listeners, routes, clusters and endpoints, and what
// they were built from.
type routed struct {
	mesh   *meshVersion
	kind   string
	agent  bool
	ids    []string
	byType map[string][]types.Resource
}

// routing builds what node receives besides secrets, or returns what was
// built for it last when the mesh, its kind, agent mark and identities
// are the same: a re-keyed identity changes a node's secrets only, and the same
// resource values let the xDS server skip encoding them again.
func (b *Builder) routing(n store.Node) (map[string][]types.Resource, error) {
	mv := b.mesh.Load()
	if v, ok := b.routes.Load(n.Name); ok {
		r := v.(*routed)
		if r.mesh == mv && r.kind == n.Kind && r.agent == n.Agent && slices.Equal(r.ids, n.Identities) {
			b.stats.routesKept.Add(1)
			return r.byType, nil
		}
	}
	var m *mesh.Mesh
	if mv != nil {
		m = mv.m
	}
	out, err := mesh.Build(m, mesh.Node{Name: n.Name, Kind: n.Kind, Identities: n.Identities, Agent: n.Agent}, b.cfg.TrustDomain)
	if err != nil {
		return nil, err
	}
	b.routes.Store(n.Name, &routed{mesh: mv, kind: n.Kind, agent: n.Agent, ids: slices.Clone(n.Identities), byType: out.ByType})
	return out.ByType, nil
}

// readCredential reads the certificate and key of id's current serial, as
// a node receives them; key is nil when meshca holds no key for it. It
// is the only place builds read credentials from the store.
func readCredential(tx *store.Tx, id store.Identity) (credential, error) {
	c, err := tx.Credential(id.CurrentSerial)
	if err != nil {
		return credential{}, err
	}
	out := credential{identity: id.Name, spiffeID: id.SPIFFEID, serial: c.Serial, notAfter: c.NotAfter}
	if c.Key != nil {
		out.chain = append([][]byte{c.DER}, c.Chain...)
		out.key = c.Key
	}
	return out, nil
}

func (b *Builder) wakeTrust() {
	select {
	case b.trustWake <- struct{}{}:
	default:
	}
}

func (b *Builder) trustLoop(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-b.trustWake:
		}
		b.mu.Lock()
		seq := b.progress.trustWant
		b.mu.Unlock()
		if err := b.publishTrust(ctx); err != nil {
			if ctx.Err() == nil {
				b.log.Error("trust bundle not pushed to every node", logErr, err)
			}
			continue
		}
		b.mu.Lock()
		b.progress.trustBuilt = max(b.progress.trustBuilt, seq)
		b.progress.signalLocked()
		b.mu.Unlock()
	}
}

// publishTrust hands the trust bundle over when it changed. Only Sync,
// then the trust loop, call it: one at a time.
func (b *Builder) publishTrust(ctx context.Context) error {
	bundle, crl, err := b.cfg.Trust.Trust(ctx)
	if err != nil {
		return err
	}
	// The same roots in another order (a root rotation's switch puts the
	// new root first) trust the same peers: not a change worth a push to
	// every node.
	if b.trustPEM.bundle != nil && sameBlocks(bundle, b.trustPEM.bundle) && string(crl) == string(b.trustPEM.crl) {
		return nil
	}
	secret, err := sds.ValidationSecret(sds.BundleName(b.cfg.TrustDomain), bundle, crl)
	if err != nil {
		return fmt.Errorf("nodeconfig: trust bundle secret: %w", err)
	}
	if err := b.cfg.Publisher.SetTrust(ctx, secret); err != nil {
		return err
	}
	b.trustPEM.bundle, b.trustPEM.crl = bundle, crl
	b.stats.trusts.Add(1)
	return nil
}

// sameBlocks reports whether two PEM texts hold the same blocks, in any
// order.
func sameBlocks(a, b []byte) bool {
	blocks := func(data []byte) []string {
		var out []string
		for {
			var p *pem.Block
			if p, data = pem.Decode(data); p == nil {
				slices.Sort(out)
				return out
			}
			out = append(out, p.Type+"\x00"+string(p.Bytes))
		}
	}
	return slices.Equal(blocks(a), blocks(b))
}

// Stats are the Builder's counters since start.
type Stats struct {
	Builds, Removes, TrustPushes, Resyncs, Failures int64
	// CredentialReads counts certificates and keys read from the store: a
	// build reads only those whose secret it does not hold already.
	CredentialReads int64
	// RoutingKept counts builds that kept the node's listeners, routes,
	// clusters and endpoints from its last build (same mesh, kind and
	// identities) instead of building them again.
	RoutingKept int64
}

// Stats returns the Builder's counters.
func (b *Builder) Stats() Stats {
	return Stats{Builds: b.stats.builds.Load(), Removes: b.stats.removes.Load(), TrustPushes: b.stats.trusts.Load(),
		Resyncs: b.stats.resyncs.Load(), Failures: b.stats.failures.Load(), CredentialReads: b.stats.reads.Load(), RoutingKept: b.stats.routesKept.Load()}
}
