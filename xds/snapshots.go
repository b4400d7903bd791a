package xds

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"runtime"
	"slices"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshca/meshca/internal/validate"
)

// The server takes snapshots; it never asks for them. Whatever computes
// what a node receives hands it over with SetNode, RemoveNode and SetTrust
// (the one-way hand-off of go-control-plane's SetSnapshot), from its own
// goroutines. Each method may be called concurrently with the others and
// for different nodes at once; calls for one node are applied in the order
// they are made.

// SetNode publishes every resource node may receive, by type URL
// (resource.SecretType, ...), except the trust bundle: the server adds the
// bundle last given to SetTrust to the node's secrets. withdrawn names
// secrets the node held and lost (a revoked identity still assigned to it):
// it may keep naming them, as Envoy does while a listener references them,
// but gets nothing for them. Resources must not change after the call. A
// resource that fails validation fails the call and the node keeps its
// previous snapshot.
func (s *Server) SetNode(ctx context.Context, node string, res map[string][]types.Resource, withdrawn []string) error {
	// One update per node at a time, so that a trust swap and a full
	// update of the node never interleave.
	mu := s.refreshLock(node)
	mu.Lock()
	defer mu.Unlock()
	bundle, bundleSum := s.currentTrust()
	memo := s.knownDigests(node)
	full := make(map[string][]types.Resource, len(res)+1)
	for t, items := range res {
		full[t] = slices.Clone(items)
	}
	if bundle != nil {
		memo.done[bundle] = bundleSum
		full[resource.SecretType] = append(full[resource.SecretType], bundle)
	}
	snap, sums, err := buildSnapshot(full, memo)
	if err != nil {
		s.stats.invalid.Add(1)
		return fmt.Errorf("xds: node %q: %w", node, err)
	}
	secrets := map[string]bool{}
	for name := range snap.GetResources(resource.SecretType) {
		secrets[name] = true
	}
	// Names a node may ask for grow before the snapshot and shrink after
	// it, so a request for a newly assigned secret is never refused.
	s.addAllowed(node, secrets)
	s.addFormer(node, withdrawn)
	s.setRouteSums(node, full, memo)
	if err := s.publish(ctx, node, snap, sums); err != nil {
		return fmt.Errorf("xds: node %q: %w", node, err)
	}
	s.setAllowed(node, secrets)
	s.log.Debug("xDS snapshot set", "node", node, "secrets", len(secrets), "version", snap.GetVersion(resource.SecretType))
	return nil
}

// RemoveNode forgets a node that may no longer connect (unregistered or
// revoked): its snapshot goes and its open streams are closed.
func (s *Server) RemoveNode(node string) {
	mu := s.refreshLock(node)
	mu.Lock()
	defer mu.Unlock()
	s.setAllowed(node, nil)
	s.setSecretSums(node, nil)
	s.setRouteSums(node, nil, nil)
	s.cache.ClearSnapshot(node)
	if s.cfg.Telemetry != nil {
		s.cfg.Telemetry.Forget(node)
	}
	if n := s.closeNode(node); n > 0 {
		s.log.Info("closed the streams of a node that may no longer connect", "node", node, "streams", n)
	}
}

// SetTrust makes bundle the trust-bundle secret of every node (new roots or
// a new CRL) and pushes it to every node that has a snapshot, without
// rebuilding the rest: each node's snapshot is reused with the bundle
// secret swapped, and no other secret is encoded again.
func (s *Server) SetTrust(ctx context.Context, bundle types.Resource) error {
	sum, err := (*digests)(nil).digest(bundle)
	if err != nil {
		s.stats.invalid.Add(1)
		return fmt.Errorf("xds: trust bundle: %w", err)
	}
	s.trustMu.Lock()
	s.trust, s.trustSum = bundle, sum
	s.trustMu.Unlock()
	s.allowedMu.RLock()
	nodes := make([]string, 0, len(s.allowed))
	for n := range s.allowed {
		nodes = append(nodes, n)
	}
	s.allowedMu.RUnlock()
	if err := eachNode(nodes, func(node string) error { return s.swapBundle(ctx, node) }); err != nil {
		return fmt.Errorf("xds: trust bundle not pushed to every node: %w", err)
	}
	return nil
}

// knownDigests returns a memo that knows the digests of the resources in
// node's current snapshot: a resource handed over again as the same value
// (node configuration shares one value per certificate, and keeps a
// node's listeners, routes and clusters while its mesh inputs stay the
// same) was validated and hashed when it was first set, and is not encoded
// again.
func (s *Server) knownDigests(node string) *digests {
	s.allowedMu.RLock()
	memo := &digests{done: maps.Clone(s.routeSums[node])}
	s.allowedMu.RUnlock()
	if memo.done == nil {
		memo.done = map[types.Resource][sha256.Size]byte{}
	}
	cur, err := s.cache.GetSnapshot(node)
	if err != nil {
		return memo
	}
	sums := s.secretSums(node)
	for name, r := range cur.GetResources(resource.SecretType) {
		if d, ok := sums[name]; ok {
			memo.done[r] = d
		}
	}
	return memo
}

func (s *Server) currentTrust() (types.Resource, [sha256.Size]byte) {
	s.trustMu.Lock()
	defer s.trustMu.Unlock()
	return s.trust, s.trustSum
}

// swapBundle replaces the bundle secret in node's snapshot, if it has one.
// The bundle is read under the node's lock, as SetNode reads it, so that of
// two changes racing the later always lands last.
func (s *Server) swapBundle(ctx context.Context, node string) error {
	mu := s.refreshLock(node)
	mu.Lock()
	defer mu.Unlock()
	bundle, bundleSum := s.currentTrust()
	cur, err := s.cache.GetSnapshot(node)
	if err != nil {
		return nil // unknown or revoked: nothing to push to
	}
	old, ok := cur.(*cachev3.Snapshot)
	if !ok {
		return fmt.Errorf("snapshot of type %T", cur)
	}
	name := cachev3.GetResourceName(bundle)
	// The snapshot's own index is read, not copied: a bundle change
	// visits every node, and what it allocates per node is garbage the
	// server collects while it pushes.
	secrets := old.Resources[types.Secret].Items
	if _, held := secrets[name]; !held {
		return nil
	}
	// The other secrets' digests were kept when the snapshot was built: no
	// secret is encoded again. The kept map is replaced, never changed.
	kept := s.secretSums(node)
	sums := make(map[string][sha256.Size]byte, len(secrets))
	items := make(map[string]types.ResourceWithTTL, len(secrets))
	names := make([]string, 0, len(secrets))
	for n, r := range secrets {
		d, ok := kept[n]
		switch {
		case n == name:
			r, d = types.ResourceWithTTL{Resource: bundle}, bundleSum
		case !ok:
			if d, err = (*digests)(nil).digest(r.Resource); err != nil {
				return err
			}
		}
		sums[n], items[n] = d, r
		names = append(names, n)
	}
	slices.Sort(names)
	version := versionOf(names, sums)
	if version == old.GetVersion(resource.SecretType) {
		return nil
	}
	snap := &cachev3.Snapshot{Resources: old.Resources}
	snap.Resources[types.Secret] = cachev3.Resources{Version: version, Items: items}
	return s.publish(ctx, node, snap, sums)
}

// publish records snap's versions, so that a fast ACK finds them, and its
// secrets' digests, then sets it.
func (s *Server) publish(ctx context.Context, node string, snap *cachev3.Snapshot, sums map[string][sha256.Size]byte) error {
	versions := map[string]string{}
	for _, t := range []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType} {
		versions[t] = snap.GetVersion(t)
	}
	s.cb.published(node, versions)
	s.setSecretSums(node, sums)
	if err := s.cache.SetSnapshot(ctx, node, snap); err != nil {
		return fmt.Errorf("set snapshot: %w", err)
	}
	return nil
}

func (s *Server) secretSums(node string) map[string][sha256.Size]byte {
	s.allowedMu.RLock()
	defer s.allowedMu.RUnlock()
	return s.sums[node]
}

// setRouteSums keeps the digests of node's resources other than secrets,
// for its next update (see knownDigests).
func (s *Server) setRouteSums(node string, res map[string][]types.Resource, memo *digests) {
	var keep map[types.Resource][sha256.Size]byte
	if memo != nil {
		memo.mu.Lock()
		keep = map[types.Resource][sha256.Size]byte{}
		for t, items := range res {
			if t == resource.SecretType {
				continue
			}
			for _, r := range items {
				if d, ok := memo.done[r]; ok {
					keep[r] = d
				}
			}
		}
		memo.mu.Unlock()
	}
	s.allowedMu.Lock()
	defer s.allowedMu.Unlock()
	if keep == nil {
		delete(s.routeSums, node)
		return
	}
	s.routeSums[node] = keep
}

func (s *Server) setSecretSums(node string, sums map[string][sha256.Size]byte) {
	s.allowedMu.Lock()
	defer s.allowedMu.Unlock()
	if sums == nil {
		delete(s.sums, node)
		return
	}
	s.sums[node] = sums
}

// eachNode runs fn for every node on every core and joins the errors.
func eachNode(nodes []string, fn func(node string) error) error {
	var (
		mu   sync.Mutex
		errs []error
		next atomic.Int64
		wg   sync.WaitGroup
	)
	for w := 0; w < min(len(nodes), runtime.GOMAXPROCS(0)); w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(nodes) {
					return
				}
				if err := fn(nodes[i]); err != nil {
					mu.Lock()
					errs = append(errs, fmt.Errorf("node %q: %w", nodes[i], err))
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// refreshLock is the lock that orders a node's updates (striped by name).
func (s *Server) refreshLock(node string) *sync.Mutex {
	h := fnv.New32a()
	h.Write([]byte(node))
	return &s.refreshLocks[h.Sum32()%uint32(len(s.refreshLocks))]
}

// buildSnapshot validates every resource and gives each type a version that
// is the hash of its content: a type whose resources did not change keeps
// its version and is not resent. It also returns the secrets' digests. memo, when not nil, remembers the digest
// of resources shared between nodes (the trust bundle), so they are
// validated and marshaled once per refresh, not once per node.
func buildSnapshot(res map[string][]types.Resource, memo *digests) (_ *cachev3.Snapshot, secretSums map[string][sha256.Size]byte, _ error) {
	snap := &cachev3.Snapshot{}
	for typeURL, items := range res {
		rt := cachev3.GetResponseType(typeURL)
		if rt == types.UnknownType {
			return nil, nil, fmt.Errorf("%w: unknown type %s", errInvalidResource, typeURL)
		}
		version, sums, err := typeVersion(typeURL, items, memo)
		if err != nil {
			return nil, nil, err
		}
		if typeURL == resource.SecretType {
			secretSums = sums
		}
		snap.Resources[rt] = cachev3.NewResources(version, items)
	}
	for rt := range snap.Resources {
		if snap.Resources[rt].Items == nil {
			snap.Resources[rt] = cachev3.NewResources("empty", nil)
		}
	}
	return snap, secretSums, nil
}

// typeVersion checks one type's resources (named, unique, valid) and
// returns the hash of their content in name order, and each one's digest:
// the same resources give the same version whatever built them. It sorts
// items.
func typeVersion(typeURL string, items []types.Resource, memo *digests) (string, map[string][sha256.Size]byte, error) {
	sort.Slice(items, func(i, j int) bool { return cachev3.GetResourceName(items[i]) < cachev3.GetResourceName(items[j]) })
	sums := make(map[string][sha256.Size]byte, len(items))
	names := make([]string, 0, len(items))
	for _, r := range items {
		name := cachev3.GetResourceName(r)
		if name == "" {
			return "", nil, fmt.Errorf("%w: %s without a name", errInvalidResource, typeURL)
		}
		if _, dup := sums[name]; dup {
			return "", nil, fmt.Errorf("%w: two %s resources named %q", errInvalidResource, typeURL, name)
		}
		d, err := memo.digest(r)
		if err != nil {
			return "", nil, fmt.Errorf("%w: %s %q: %v", errInvalidResource, typeURL, name, err)
		}
		sums[name] = d
		names = append(names, name)
	}
	return versionOf(names, sums), sums, nil
}

// versionOf hashes sorted names with their digests.
func versionOf(names []string, sums map[string][sha256.Size]byte) string {
	h := sha256.New()
	for _, name := range names {
		d := sums[name]
		h.Write([]byte(name))
		h.Write(d[:])
	}
	return hex.EncodeToString(h.Sum(nil))[:16]
}

// digests validates resources and hashes their deterministic encoding,
// once per resource value: the same *Secret handed to every node is done
// once. Resources must not change after they are handed over.
type digests struct {
	mu   sync.Mutex
	done map[types.Resource][sha256.Size]byte
}

func (m *digests) digest(r types.Resource) ([sha256.Size]byte, error) {
	if m != nil {
		m.mu.Lock()
		d, ok := m.done[r]
		m.mu.Unlock()
		if ok {
			return d, nil
		}
	}
	if err := validate.Message(r); err != nil {
		return [sha256.Size]byte{}, err
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
	if err != nil {
		return [sha256.Size]byte{}, err
	}
	d := sha256.Sum256(b)
	if m != nil {
		m.mu.Lock()
		if m.done == nil {
			m.done = map[types.Resource][sha256.Size]byte{}
		}
		m.done[r] = d
		m.mu.Unlock()
	}
	return d, nil
}

func (s *Server) allowedSecrets(node string) map[string]bool {
	s.allowedMu.RLock()
	defer s.allowedMu.RUnlock()
	return s.allowed[node]
}

// knownNode reports whether the node is registered and active: it has a
// snapshot, possibly empty.
func (s *Server) knownNode(node string) bool {
	s.allowedMu.RLock()
	defer s.allowedMu.RUnlock()
	_, ok := s.allowed[node]
	return ok
}

func (s *Server) setAllowed(node string, names map[string]bool) {
	s.allowedMu.Lock()
	defer s.allowedMu.Unlock()
	if names == nil {
		delete(s.allowed, node)
		delete(s.former, node)
		return
	}
	// Names the node loses (an unassigned or revoked identity) stay
	// requestable: Envoy keeps asking for a secret while listeners that
	// reference it drain, and refusing would close its whole ADS stream.
	// Nothing is served for them, since they are in no snapshot of the node.
	for n := range s.allowed[node] {
		if !names[n] {
			if s.former[node] == nil {
				s.former[node] = map[string]bool{}
			}
			s.former[node][n] = true
		}
	}
	for n := range names {
		delete(s.former[node], n)
	}
	s.allowed[node] = names
}

func (s *Server) addFormer(node string, names []string) {
	if len(names) == 0 {
		return
	}
	s.allowedMu.Lock()
	defer s.allowedMu.Unlock()
	if s.former[node] == nil {
		s.former[node] = map[string]bool{}
	}
	for _, n := range names {
		s.former[node][n] = true
	}
}

// formerlyAllowed reports whether node could once request name.
func (s *Server) formerlyAllowed(node, name string) bool {
	s.allowedMu.RLock()
	defer s.allowedMu.RUnlock()
	return s.former[node][name]
}

func (s *Server) addAllowed(node string, names map[string]bool) {
	s.allowedMu.Lock()
	defer s.allowedMu.Unlock()
	merged := map[string]bool{}
	for n := range s.allowed[node] {
		merged[n] = true
	}
	for n := range names {
		merged[n] = true
	}
	s.allowed[node] = merged
}
