package xds

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/nodeapi"
)

// Joiner redeems a node's one-time join token for a node certificate issued
// to the CSR's key. It audits refusals. Errors it returns are mapped by
// JoinError.
type Joiner interface {
	Join(ctx context.Context, node, token string, csrDER []byte) (nodeapi.JoinResponse, error)
	// Renew issues a new certificate to an authenticated node; presented is
	// the certificate the call was authenticated with, which must still be
	// the node's current one when the renewal is recorded.
	Renew(ctx context.Context, node string, presented *x509.Certificate, csrDER []byte) (nodeapi.JoinResponse, error)
}

// JoinError lets a Joiner say which gRPC code and client-safe message an
// error deserves.
type JoinError struct {
	Code    codes.Code
	Message string
}

func (e *JoinError) Error() string { return e.Message }

var registerCodec sync.Once

func (s *Server) registerJoin() {
	// grpc-go picks a codec by content-subtype from its global registry.
	registerCodec.Do(func() { encoding.RegisterCodec(nodeapi.Codec{}) })
	s.grpc.RegisterService(&grpc.ServiceDesc{
		ServiceName: nodeapi.Service,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{
			{MethodName: nodeapi.JoinMethod, Handler: unary(nodeapi.FullJoinMethod, s.join)},
			{MethodName: nodeapi.RenewMethod, Handler: unary(nodeapi.FullRenewMethod, s.renew)},
			{MethodName: nodeapi.SignMethod, Handler: unaryOf(nodeapi.FullSignMethod, s.signCSR)},
			{MethodName: nodeapi.IdentitiesMethod, Handler: unaryOf(nodeapi.FullIdentitiesMethod, s.identities)},
		},
		Streams: []grpc.StreamDesc{
			{StreamName: nodeapi.WatchIdentitiesMethod, Handler: s.watchIdentities, ServerStreams: true},
		},
	}, struct{}{})
}

// unary adapts a typed handler to grpc's method handler, running the
// interceptors.
func unary[Req any](method string, fn func(context.Context, *Req) (*nodeapi.JoinResponse, error)) func(any, context.Context, func(any) error, grpc.UnaryServerInterceptor) (any, error) {
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

func (s *Server) join(ctx context.Context, req *nodeapi.JoinRequest) (*nodeapi.JoinResponse, error) {
	csr, err := csrDER(req.CSRPEM)
	if err != nil {
		s.stats.joinRefused.Add(1)
		s.cfg.Audit.RecordDenial(ctx, "node.join", text.Clip(req.Node, 255), "csr_pem is not one PEM CERTIFICATE REQUEST block")
		return nil, err
	}
	resp, err := s.cfg.Joiner.Join(ctx, req.Node, req.Token, csr)
	return s.joinAnswer(resp, err, req.Node)
}

// renew runs behind the interceptors, so the node is authenticated and
// still registered.
func (s *Server) renew(ctx context.Context, req *nodeapi.RenewRequest) (*nodeapi.JoinResponse, error) {
	node, ok := nodeFrom(ctx)
	if !ok || !s.knownNode(node) {
		return nil, status.Error(codes.PermissionDenied, "node is not registered or was revoked")
	}
	csr, err := csrDER(req.CSRPEM)
	if err != nil {
		s.cfg.Audit.RecordDenial(ctx, "node.renew", node, "csr_pem is not one PEM CERTIFICATE REQUEST block")
		return nil, err
	}
	resp, err := s.cfg.Joiner.Renew(ctx, node, peerLeaf(ctx), csr)
	return s.joinAnswer(resp, err, node)
}

func csrDER(p string) ([]byte, error) {
	block, rest := pem.Decode([]byte(p))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || !onlySpace(rest) {
		return nil, status.Error(codes.InvalidArgument, "csr_pem must hold one PEM CERTIFICATE REQUEST block")
	}
	return block.Bytes, nil
}

func (s *Server) joinAnswer(resp nodeapi.JoinResponse, err error, node string) (*nodeapi.JoinResponse, error) {
	if err != nil {
		s.stats.joinRefused.Add(1)
		var je *JoinError
		if errors.As(err, &je) {
			return nil, status.Error(je.Code, je.Message)
		}
		s.log.Error("node join or renewal failed", "node", text.Clip(node, 100), "err", err)
		return nil, status.Error(codes.Internal, "join failed; the server log has the details")
	}
	s.stats.joins.Add(1)
	return &resp, nil
}

func onlySpace(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\n' && c != '\r' && c != '\t' {
			return false
		}
	}
	return true
}
