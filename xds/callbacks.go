package xds

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/lograte"
	"github.com/meshca/meshca/internal/text"
)

// Audit actions recorded by the xDS server.
const (
	ActionAuth    = "xds.auth"
	ActionRequest = "xds.request"
)

// callbacks binds streams to nodes, authorizes every request and keeps
// per-node status.
type callbacks struct {
	s *Server

	refusalOnce sync.Once
	refusalLog  *slog.Logger // rate limited: a node can repeat refused requests at will

	mu      sync.Mutex
	acks    chan struct{}         // closed and replaced at every ACK and stream close
	streams map[streamKey]boundTo // stream -> authenticated node
	named   map[streamKey]bool    // delta streams whose first request named the node
	status  map[string]*nodeStatus
	// connectedN and pendingN are what pending reports, kept as each
	// node's status changes (see change) so that a CA rotation asking
	// every second does not walk every node under mu.
	connectedN, pendingN int
}

// boundTo is what a stream was opened for: its node, and the type URL its
// service implies (resource.AnyType for ADS).
type boundTo struct {
	node, typeURL string
}

// streamKey identifies a stream: go-control-plane numbers SotW and delta
// streams with separate counters, so the ID alone is ambiguous.
type streamKey struct {
	delta bool
	id    int64
}

var _ serverv3.Callbacks = (*callbacks)(nil)

type nodeStatus struct {
	published map[string]publication // type URL -> version in the node's current snapshot
	// secrets is set once the node asks for secrets: CA rotation waits for
	// such nodes to acknowledge a new bundle.
	secrets  bool
	streams  int
	acked    map[string]string // type URL -> version
	nacks    int
	lastNack string
	lastSeen time.Time
}

// NodeStatus is what the server knows of a node's connections.
// publication is a version of one type set for a node, and when.
type publication struct {
	version string
	at      time.Time
	acked   bool
}

type NodeStatus struct {
	Streams  int               // open xDS streams
	Acked    map[string]string // type URL -> last ACKed version
	NACKs    int
	LastNACK string
	LastSeen time.Time
}

func newCallbacks(s *Server) *callbacks {
	return &callbacks{s: s, acks: make(chan struct{}), streams: map[streamKey]boundTo{}, named: map[streamKey]bool{}, status: map[string]*nodeStatus{}}
}

func (c *callbacks) open(ctx context.Context, id streamKey, typeURL string) error {
	node, ok := nodeFrom(ctx)
	if !ok {
		// The interceptors make this unreachable; refuse rather than trust.
		return status.Error(codes.Unauthenticated, "stream has no authenticated node")
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.streams[id] = boundTo{node: node, typeURL: typeURL}
	st := c.nodeStatus(node)
	c.change(st, func() { st.streams++ })
	st.lastSeen = c.s.cfg.Clock.Now()
	return nil
}

func (c *callbacks) closed(id streamKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if b, ok := c.streams[id]; ok {
		st := c.nodeStatus(b.node)
		c.change(st, func() { st.streams-- })
		delete(c.streams, id)
		delete(c.named, id)
		c.signalLocked()
	}
}

func (c *callbacks) nodeStatus(node string) *nodeStatus {
	st, ok := c.status[node]
	if !ok {
		st = &nodeStatus{acked: map[string]string{}, published: map[string]publication{}}
		c.status[node] = st
	}
	return st
}

func (c *callbacks) bound(id streamKey) boundTo {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.streams[id]
}

// authorize checks one request of an authenticated node: node.id must be
// the node, and every named secret must be one the node may receive. Other
// types come from the node's own snapshot only, so a name there cannot
// reach another node's resources.
func (c *callbacks) authorize(ctx context.Context, node string, reqNode *core.Node, typeURL string, names ...[]string) error {
	if node == "" {
		return status.Error(codes.Unauthenticated, "stream has no authenticated node")
	}
	if reqNode == nil || reqNode.GetId() != node {
		got := "<none>"
		if reqNode != nil {
			got = text.Clip(reqNode.GetId(), 200)
		}
		return c.deny(ctx, node, fmt.Sprintf("node.id %q does not match the certificate's node %q", got, node))
	}
	if typeURL != resource.SecretType {
		return nil
	}
	allowed := c.s.allowedSecrets(node)
	for _, list := range names {
		for _, name := range list {
			if name == "*" || allowed[name] || c.s.formerlyAllowed(node, name) {
				continue
			}
			return c.deny(ctx, node, fmt.Sprintf("secret %q is not assigned to node %q", text.Clip(name, 300), node))
		}
	}
	return nil
}

func (c *callbacks) deny(ctx context.Context, node, why string) error {
	c.s.stats.denied.Add(1)
	c.refusalOnce.Do(func() {
		c.refusalLog = slog.New(lograte.New(c.s.log.Handler(), lograte.Config{Now: c.s.cfg.Clock.Now}))
	})
	c.refusalLog.Warn("xDS request denied", "node", node, "reason", why)
	c.s.cfg.Audit.RecordDenial(context.WithoutCancel(ctx), ActionRequest, node, why)
	return status.Error(codes.PermissionDenied, why)
}

// track records ACKs and NACKs for node status.
func (c *callbacks) track(node, typeURL, version string, nack string) {
	// Type URLs and versions come from the proxy: keep them bounded, as
	// they reach node status, metric labels and the status page.
	switch typeURL {
	case resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType, resource.SecretType:
	default:
		typeURL = "other"
	}
	version = text.Clip(version, 64)
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.nodeStatus(node)
	st.lastSeen = c.s.cfg.Clock.Now()
	switch {
	case nack != "":
		st.nacks++
		st.lastNack = text.Clip(nack, 500)
		if c.s.cfg.OnNACK != nil {
			c.s.cfg.OnNACK(node, typeURL, st.lastNack)
		}
	case version != "":
		c.change(st, func() { st.acked[typeURL] = version })
		c.signalLocked()
		if p, ok := st.published[typeURL]; ok && !p.acked && p.version == version {
			p.acked = true
			st.published[typeURL] = p
			if c.s.cfg.OnPush != nil {
				c.s.cfg.OnPush(typeURL, c.s.cfg.Clock.Now().Sub(p.at))
			}
		}
	}
}

// published records the versions of a node's new snapshot, to measure how
// long the node takes to acknowledge each change.
func (c *callbacks) published(node string, versions map[string]string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.nodeStatus(node)
	now := c.s.cfg.Clock.Now()
	c.change(st, func() {
		for typeURL, v := range versions {
			if st.published[typeURL].version != v {
				st.published[typeURL] = publication{version: v, at: now}
			}
		}
	})
}

// signalLocked wakes the waiters of AckEvents; c.mu is held.
func (c *callbacks) signalLocked() {
	close(c.acks)
	c.acks = make(chan struct{})
}

// synced reports whether node has an open stream, and whether it has
// acknowledged the version published last of every type it acknowledged
// before (and of secrets, once it asked for them).
func (c *callbacks) synced(node string) (connected, synced bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.status[node]
	if !ok || st.streams == 0 {
		return false, false
	}
	for typeURL, p := range st.published {
		_, asked := st.acked[typeURL]
		if typeURL == resource.SecretType {
			asked = asked || st.secrets
		}
		if asked && st.acked[typeURL] != p.version {
			return true, false
		}
	}
	return true, true
}

// pending counts connected nodes that ask for secrets and have not
// acknowledged their current ones (including nodes that have not
// acknowledged anything yet), and every connected node.
func (c *callbacks) pending() (pending, connected int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.pendingN, c.connectedN
}

// state is whether the node counts as connected, and as pending, in
// pending.
func (st *nodeStatus) state() (connected, pending bool) {
	if st.streams == 0 {
		return false, false
	}
	return true, st.secrets && st.acked[resource.SecretType] != st.published[resource.SecretType].version
}

// change applies fn to st and keeps the counts of pending up to date;
// c.mu is held.
func (c *callbacks) change(st *nodeStatus, fn func()) {
	wasConnected, wasPending := st.state()
	fn()
	connected, pending := st.state()
	c.connectedN += count(connected) - count(wasConnected)
	c.pendingN += count(pending) - count(wasPending)
}

func count(b bool) int {
	if b {
		return 1
	}
	return 0
}

// Status returns a copy of the node's status.
func (c *callbacks) Status(node string) NodeStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.status[node]
	if !ok {
		return NodeStatus{Acked: map[string]string{}}
	}
	out := NodeStatus{Streams: st.streams, NACKs: st.nacks, LastNACK: st.lastNack, LastSeen: st.lastSeen, Acked: map[string]string{}}
	for k, v := range st.acked {
		out.Acked[k] = v
	}
	return out
}

func (c *callbacks) OnStreamOpen(ctx context.Context, id int64, typeURL string) error {
	return c.open(ctx, streamKey{id: id}, typeURL)
}
func (c *callbacks) OnStreamClosed(id int64, _ *core.Node) { c.closed(streamKey{id: id}) }

func (c *callbacks) OnStreamRequest(id int64, req *discovery.DiscoveryRequest) error {
	node := c.bound(streamKey{id: id}).node
	// The SotW server has already put the stream's node and type on
	// requests that omit them, so req.Node is what the cache will key on.
	if err := c.authorize(context.Background(), node, req.GetNode(), req.GetTypeUrl(), req.GetResourceNames()); err != nil {
		return err
	}
	if req.GetTypeUrl() == resource.SecretType {
		c.subscribedSecrets(node)
	}
	// go-control-plane v0.14's SnapshotCache filters SotW answers by the
	// literal names, so an explicit wildcard "*" would match nothing. An
	// empty list means the same here: everything in the node's own snapshot.
	if slices.Contains(req.GetResourceNames(), "*") {
		req.ResourceNames = nil
	}
	c.track(node, req.GetTypeUrl(), req.GetVersionInfo(), req.GetErrorDetail().GetMessage())
	return nil
}

func (c *callbacks) OnStreamResponse(context.Context, int64, *discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {
}

func (c *callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, typeURL string) error {
	return c.open(ctx, streamKey{delta: true, id: id}, typeURL)
}
func (c *callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) {
	c.closed(streamKey{delta: true, id: id})
}

func (c *callbacks) OnStreamDeltaRequest(delta int64, req *discovery.DeltaDiscoveryRequest) error {
	id := streamKey{delta: true, id: delta}
	b := c.bound(id)
	node := b.node
	// The delta server calls back before it fills in a type URL the
	// request leaves out: on a per-type service (DeltaSecrets) an empty
	// one means the service's type, and is checked as such. On ADS the
	// server refuses it right after.
	if req.GetTypeUrl() == "" && b.typeURL != resource.AnyType {
		req.TypeUrl = b.typeURL
	}
	// The delta server calls back before it copies the stream's node onto
	// requests that omit it: the first request must carry the node, later
	// ones may leave it out.
	c.mu.Lock()
	first := !c.named[id]
	c.named[id] = true
	c.mu.Unlock()
	reqNode := req.GetNode()
	if reqNode == nil && !first {
		reqNode = &core.Node{Id: node}
	}
	initial := make([]string, 0, len(req.GetInitialResourceVersions()))
	for name := range req.GetInitialResourceVersions() {
		initial = append(initial, name)
	}
	slices.Sort(initial)
	if err := c.authorize(context.Background(), node, reqNode, req.GetTypeUrl(), req.GetResourceNamesSubscribe(), initial); err != nil {
		return err
	}
	version := ""
	if req.GetResponseNonce() != "" {
		version = "nonce:" + req.GetResponseNonce()
	}
	if req.GetTypeUrl() == resource.SecretType {
		c.subscribedSecrets(node)
	}
	// A delta ACK carries no version: it acknowledges the last response,
	// which holds the node's current configuration.
	c.mu.Lock()
	if version != "" {
		version = c.nodeStatus(node).published[req.GetTypeUrl()].version
	}
	c.mu.Unlock()
	c.track(node, req.GetTypeUrl(), version, req.GetErrorDetail().GetMessage())
	return nil
}

func (c *callbacks) subscribedSecrets(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.nodeStatus(node)
	c.change(st, func() { st.secrets = true })
}

func (c *callbacks) OnStreamDeltaResponse(int64, *discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse) {
}

func (c *callbacks) OnFetchRequest(ctx context.Context, req *discovery.DiscoveryRequest) error {
	node, _ := nodeFrom(ctx)
	return c.authorize(ctx, node, req.GetNode(), req.GetTypeUrl(), req.GetResourceNames())
}

func (c *callbacks) OnFetchResponse(*discovery.DiscoveryRequest, *discovery.DiscoveryResponse) {}
