package xds

import (
	"context"
	"encoding/pem"
	"errors"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/nodeapi"
)

// Joiner redeems a node's one-time join token for a node certificate issued
// to the CSR's key. It audits refusals. Errors it returns are mapped by
// JoinError.
type Joiner interface {
	Join(ctx context.Context, node, token string, csrDER []byte) (nodeapi.JoinResponse, error)
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
		Methods: []grpc.MethodDesc{{
			MethodName: nodeapi.JoinMethod,
			Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				req := new(nodeapi.JoinRequest)
				if err := dec(req); err != nil {
					return nil, status.Error(codes.InvalidArgument, "join request is not valid JSON")
				}
				h := func(ctx context.Context, req any) (any, error) { return s.join(ctx, req.(*nodeapi.JoinRequest)) }
				if icpt == nil {
					return h(ctx, req)
				}
				return icpt(ctx, req, &grpc.UnaryServerInfo{FullMethod: nodeapi.FullJoinMethod}, h)
			},
		}},
	}, struct{}{})
}

func (s *Server) join(ctx context.Context, req *nodeapi.JoinRequest) (*nodeapi.JoinResponse, error) {
	block, rest := pem.Decode([]byte(req.CSRPEM))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || !onlySpace(rest) {
		s.stats.joinRefused.Add(1)
		return nil, status.Error(codes.InvalidArgument, "csr_pem must hold one PEM CERTIFICATE REQUEST block")
	}
	resp, err := s.cfg.Joiner.Join(ctx, req.Node, req.Token, block.Bytes)
	if err != nil {
		s.stats.joinRefused.Add(1)
		var je *JoinError
		if errors.As(err, &je) {
			return nil, status.Error(je.Code, je.Message)
		}
		s.log.Error("node join failed", "node", clip(req.Node, 100), "err", err)
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
