package agent

import (
	"context"
	"slices"
	"strings"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/workload/attest"
	"github.com/meshca/meshca/sds"
)

// sdsGate decides, per request, which secrets a caller of the SDS socket
// may have: an identity's only when the caller's peer credentials match
// the selectors of its assignment (none: any local process), the trust
// bundle always (it is public), and everything (a wildcard request) only
// when it matches every identity's. A request naming anything else ends
// the stream with PermissionDenied, reported through the gate.
type sdsGate struct {
	a    *Agent
	gate *attest.Gate
}

// check refuses names (or a wildcard) the caller of ctx may not have.
func (g sdsGate) check(ctx context.Context, names []string, wildcard bool) error {
	c, err := g.gate.Caller(ctx)
	if err != nil {
		return err
	}
	assigned, known := g.a.assignments()
	if !known {
		return status.Error(codes.Unavailable, "the agent has not yet learnt this node's identities from meshca; retry")
	}
	if wildcard {
		for _, sel := range assigned {
			if !attest.Match(c, sel) {
				return g.gate.Deny(c, "every secret", "the calling process does not match every identity's selectors: name the secrets it may have")
			}
		}
		return nil
	}
	bundle := sds.BundleName(g.a.cfg.TrustDomain)
	for _, name := range names {
		if name == bundle {
			continue
		}
		ident, ok := strings.CutPrefix(name, bundle+"/")
		sel, held := assigned[ident]
		if !ok || !held {
			return g.gate.Deny(c, name, "not an identity of this node")
		}
		if !attest.Match(c, sel) {
			return g.gate.Deny(c, name, "the calling process matches no selector of this identity's assignment to the node")
		}
	}
	return nil
}

// attestedStream checks every request a stream receives.
type attestedStream struct {
	grpc.ServerStream
	g     sdsGate
	state *streamState
}

type streamState struct {
	mu     sync.Mutex // the server receives on a goroutine of its own
	seen   bool       // a request arrived
	denied error      // the refusal that ended the stream
}

func (s attestedStream) RecvMsg(m any) error {
	if err := s.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	s.state.mu.Lock()
	first := !s.state.seen
	s.state.seen = true
	s.state.mu.Unlock()
	var err error
	switch r := m.(type) {
	case *discoveryv3.DiscoveryRequest:
		names := r.GetResourceNames()
		err = s.g.check(s.Context(), names, len(names) == 0 || slices.Contains(names, "*"))
	case *discoveryv3.DeltaDiscoveryRequest:
		names := r.GetResourceNamesSubscribe()
		err = s.g.check(s.Context(), names, (first && len(names) == 0) || slices.Contains(names, "*"))
	}
	if err != nil {
		s.state.mu.Lock()
		s.state.denied = err
		s.state.mu.Unlock()
	}
	return err
}

// streamInterceptor ends a stream at its first refused request, with the
// refusal as its status (go-control-plane's server ends a stream whose
// receive fails without one).
func (g sdsGate) streamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		st := new(streamState)
		err := handler(srv, attestedStream{ServerStream: ss, g: g, state: st})
		st.mu.Lock()
		defer st.mu.Unlock()
		if st.denied != nil {
			return st.denied
		}
		return err
	}
}

func (g sdsGate) unaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if r, ok := req.(*discoveryv3.DiscoveryRequest); ok {
			names := r.GetResourceNames()
			if err := g.check(ctx, names, len(names) == 0 || slices.Contains(names, "*")); err != nil {
				return nil, err
			}
		}
		return handler(ctx, req)
	}
}
