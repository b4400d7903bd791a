package xds

import (
	"context"
	"crypto/x509"
	"errors"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/nodeapi"
)

// CSRSigner signs the CSR of an agent node for one of its identities: only
// the CSR's public key is used. presented is the node certificate the call
// was authenticated with. The answer names the signing CA (IssuerSerial),
// which the server passes on only to a caller that asked for it. It audits
// its refusals; errors it returns are mapped like a Joiner's (a *JoinError
// names the gRPC code).
type CSRSigner interface {
	SignCSR(ctx context.Context, node string, presented *x509.Certificate, identity string, csrDER []byte) (nodeapi.SignResponse, error)
}

// signCSR runs behind the interceptors, on the connection of a node with a
// valid node certificate (never on the join server), like renew.
func (s *Server) signCSR(ctx context.Context, req *nodeapi.SignRequest) (*nodeapi.SignResponse, error) {
	node, ok := nodeFrom(ctx)
	if !ok || !s.knownNode(node) {
		return nil, status.Error(codes.PermissionDenied, "node is not registered or was revoked")
	}
	if s.cfg.Signer == nil {
		return nil, status.Error(codes.Unimplemented, "this meshca signs no CSRs for agent nodes")
	}
	// Bounded: see signGate. A CSR whose caller has gone is neither
	// signed nor stored (the Signer checks ctx before each).
	var (
		resp nodeapi.SignResponse
		err  error
	)
	if gerr := s.signs.do(ctx, node, func() {
		resp, err = s.cfg.Signer.SignCSR(ctx, node, peerLeaf(ctx), req.Identity, req.CSR)
	}); gerr != nil {
		return nil, gerr
	}
	if err != nil {
		if ctx.Err() != nil {
			s.signs.abandon()
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		var je *JoinError
		if errors.As(err, &je) {
			return nil, status.Error(je.Code, je.Message)
		}
		s.log.Error("CSR of an agent node not signed", "node", text.Clip(node, 100), "identity", text.Clip(req.Identity, 100), "err", err)
		return nil, status.Error(codes.Internal, "signing failed; the server log has the details")
	}
	if !askedIssuer(ctx) {
		resp.IssuerSerial = ""
	}
	return &resp, nil
}

// askedIssuer tells whether the caller asked for IssuerSerial in answers
// (nodeapi.IssuerHeader): a client that predates the field refuses it.
func askedIssuer(ctx context.Context) bool {
	md, _ := metadata.FromIncomingContext(ctx)
	return slices.Contains(md.Get(nodeapi.IssuerHeader), "1")
}

// unaryOf adapts a typed handler to grpc's method handler, running the
// interceptors.
func unaryOf[Req, Resp any](method string, fn func(context.Context, *Req) (*Resp, error)) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
	return func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
		req := new(Req)
		if err := dec(req); err != nil {
			return nil, status.Error(codes.InvalidArgument, "request is not valid JSON")
		}
		h := func(ctx context.Context, req any) (any, error) { return fn(ctx, req.(*Req)) }
		if icpt == nil {
			return h(ctx, req)
		}
		return icpt(ctx, req, &grpc.UnaryServerInfo{FullMethod: method}, h)
	}
}

// AgentIdentities lists the active identities an agent node holds, sorted
// by name, each with the selectors of the local processes it is for, and
// names the CA meshca issues from now (IssuerSerial, passed on only to a
// caller that asked for it). It refuses (a *JoinError with
// PermissionDenied) a node that is not an active agent node.
type AgentIdentities interface {
	AgentIdentities(ctx context.Context, node string) (nodeapi.IdentitiesResponse, error)
}

// identities runs behind the interceptors, on the connection of a node
// with a valid node certificate, like signCSR.
func (s *Server) identities(ctx context.Context, _ *nodeapi.IdentitiesRequest) (*nodeapi.IdentitiesResponse, error) {
	node, ok := nodeFrom(ctx)
	if !ok || !s.knownNode(node) {
		return nil, status.Error(codes.PermissionDenied, "node is not registered or was revoked")
	}
	return s.agentIdentities(ctx, node)
}

// agentIdentities is the answer of Identities (and of each message of
// WatchIdentities) for node, errors mapped to gRPC status.
func (s *Server) agentIdentities(ctx context.Context, node string) (*nodeapi.IdentitiesResponse, error) {
	if s.cfg.Identities == nil {
		return nil, status.Error(codes.Unimplemented, "this meshca lists no identities for agent nodes")
	}
	resp, err := s.cfg.Identities.AgentIdentities(ctx, node)
	if err != nil {
		var je *JoinError
		if errors.As(err, &je) {
			return nil, status.Error(je.Code, je.Message)
		}
		if ctx.Err() != nil {
			return nil, status.FromContextError(ctx.Err()).Err()
		}
		s.log.Error("identities of an agent node not listed", "node", text.Clip(node, 100), "err", err)
		return nil, status.Error(codes.Internal, "listing failed; the server log has the details")
	}
	if resp.Identities == nil {
		resp.Identities = []nodeapi.AssignedIdentity{}
	}
	if !askedIssuer(ctx) {
		resp.IssuerSerial = ""
	}
	return &resp, nil
}
