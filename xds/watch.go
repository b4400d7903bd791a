package xds

import (
	"bytes"
	"encoding/json"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/nodeapi"
)

// maxIdentityWatches bounds the WatchIdentities streams one node holds
// open at once: its agent needs one, and each is woken (and reads the
// store) at every change of the node.
const maxIdentityWatches = 4

// identityWatches are the open WatchIdentities streams, by node: each has
// a wake channel of capacity one, so that any number of changes while its
// stream is busy make it look once more.
type identityWatches struct {
	mu     sync.Mutex
	next   uint64
	byNode map[string]map[uint64]chan struct{}
}

// add registers a stream of node; ok is false when the node holds
// maxIdentityWatches already.
func (w *identityWatches) add(node string) (id uint64, wake chan struct{}, ok bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.byNode[node]) >= maxIdentityWatches {
		return 0, nil, false
	}
	if w.byNode == nil {
		w.byNode = map[string]map[uint64]chan struct{}{}
	}
	if w.byNode[node] == nil {
		w.byNode[node] = map[uint64]chan struct{}{}
	}
	w.next++
	wake = make(chan struct{}, 1)
	w.byNode[node][w.next] = wake
	return w.next, wake, true
}

func (w *identityWatches) remove(node string, id uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	delete(w.byNode[node], id)
	if len(w.byNode[node]) == 0 {
		delete(w.byNode, node)
	}
}

// wake makes the streams of nodes (every stream with all) look again.
func (w *identityWatches) wake(all bool, nodes []string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	poke := func(chans map[uint64]chan struct{}) {
		for _, c := range chans {
			select {
			case c <- struct{}{}:
			default:
			}
		}
	}
	if all {
		for _, chans := range w.byNode {
			poke(chans)
		}
		return
	}
	for _, n := range nodes {
		poke(w.byNode[n])
	}
}

// AgentsChanged tells the agents of nodes that watch their identities
// (WatchIdentities) that what they hold may have changed: each of their
// streams reads the node's identities again and sends them if they
// differ from what it sent last. It never blocks; nodes without a watching
// agent are ignored.
func (s *Server) AgentsChanged(nodes ...string) { s.watches.wake(false, nodes) }

// AllAgentsChanged is AgentsChanged for every watching agent: the CA
// meshca issues from may have changed.
func (s *Server) AllAgentsChanged() { s.watches.wake(true, nil) }

// watchIdentities serves WatchIdentities behind the stream interceptor,
// which bound the authenticated node and tracks the stream (a revoked or
// removed node's stream is ended). The stream reads the store only when
// woken, and sends only what changed.
func (s *Server) watchIdentities(_ any, ss grpc.ServerStream) error {
	ctx := ss.Context()
	node, ok := nodeFrom(ctx)
	if !ok || !s.knownNode(node) {
		return status.Error(codes.PermissionDenied, "node is not registered or was revoked")
	}
	if s.cfg.Identities == nil {
		return status.Error(codes.Unimplemented, "this meshca lists no identities for agent nodes")
	}
	if err := ss.RecvMsg(new(nodeapi.IdentitiesRequest)); err != nil {
		return status.Error(codes.InvalidArgument, "request is not valid JSON")
	}
	// Registered before the first read: a change committed after that read
	// wakes the stream.
	id, wake, ok := s.watches.add(node)
	if !ok {
		s.stats.denied.Add(1)
		return status.Errorf(codes.ResourceExhausted, "node holds %d identity watches already; an agent needs one: is another meshca agent running for this node?", maxIdentityWatches)
	}
	defer s.watches.remove(node, id)
	var last []byte
	for {
		resp, err := s.agentIdentities(ctx, node)
		if err != nil {
			return err
		}
		enc, err := json.Marshal(resp)
		if err != nil {
			return status.Error(codes.Internal, "answer not encoded")
		}
		if !bytes.Equal(enc, last) {
			if err := ss.SendMsg(resp); err != nil {
				return err
			}
			last = enc
		}
		select {
		case <-ctx.Done():
			return status.FromContextError(ctx.Err()).Err()
		case <-wake:
		}
	}
}
