package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/nodeconfig"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/nodeapi"
	"github.com/meshca/meshca/xds"
)

// trustSource is the trust bundle and CRL in the store, as node
// configuration reads them.
type trustSource struct{ auth *authority.Authority }

var _ nodeconfig.Trust = trustSource{}

func (t trustSource) Trust(ctx context.Context) (bundle, crl []byte, err error) {
	return t.auth.Trust(ctx)
}

var (
	_ registry.Issuer      = (*authority.Authority)(nil)
	_ admin.Authority      = (*authority.Authority)(nil)
	_ admin.CRLs           = (*authority.Authority)(nil)
	_ xds.DenialRecorder   = (*denials.Recorder)(nil)
	_ admin.DenialRecorder = (*denials.Recorder)(nil)
)

// pushWaiter lets admin writes wait until the nodes have the change.
type pushWaiter struct{ b *nodeconfig.Builder }

var _ admin.PushWaiter = pushWaiter{}

func (p pushWaiter) WaitPushed(ctx context.Context) (nodes, have int, took time.Duration) {
	r := p.b.WaitPushed(ctx)
	return r.Nodes, r.Have, r.Took
}

// nodeAuth tells the xDS server which refusals are of a revoked node.
type nodeAuth struct{ reg *registry.Registry }

var _ xds.Authenticator = nodeAuth{}

func (a nodeAuth) AuthenticateNode(ctx context.Context, leaf *x509.Certificate) (string, error) {
	node, err := a.reg.AuthenticateNode(ctx, leaf)
	if errors.Is(err, registry.ErrNodeRevoked) {
		return node, fmt.Errorf("%w: %w", xds.ErrNodeRevoked, err)
	}
	return node, err
}

// joiner adapts registry.Join to the xDS server's join service and decides
// which gRPC code each refusal gets.
type joiner struct {
	reg *registry.Registry
	// replicas, when set, lists the replicas for nodes that ask.
	replicas *store.Store
	log      *slog.Logger
}

var _ xds.Joiner = joiner{}

func (j joiner) Join(ctx context.Context, node, token string, csrDER []byte) (nodeapi.JoinResponse, error) {
	res, err := j.reg.Join(ctx, node, token, csrDER, "join:"+clip(node))
	resp, err := joinResponse(res, err)
	if err != nil {
		return resp, err
	}
	return withReplicas(ctx, j.replicas, j.log, resp), nil
}

func (j joiner) Renew(ctx context.Context, node string, presented *x509.Certificate, csrDER []byte) (nodeapi.JoinResponse, error) {
	res, err := j.reg.RenewNode(ctx, node, presented, csrDER)
	resp, err := joinResponse(res, err)
	if err != nil {
		return resp, err
	}
	return withReplicas(ctx, j.replicas, j.log, resp), nil
}

func joinResponse(res registry.Joined, err error) (nodeapi.JoinResponse, error) {
	switch {
	case err == nil:
	case errors.Is(err, registry.ErrRateLimited):
		return nodeapi.JoinResponse{}, &xds.JoinError{Code: codes.ResourceExhausted, Message: err.Error()}
	case errors.Is(err, registry.ErrUnavailable):
		return nodeapi.JoinResponse{}, &xds.JoinError{Code: codes.Unavailable, Message: err.Error()}
	case errors.Is(err, registry.ErrToken), errors.Is(err, registry.ErrDenied):
		return nodeapi.JoinResponse{}, &xds.JoinError{Code: codes.PermissionDenied, Message: err.Error()}
	case errors.Is(err, identity.ErrInvalidName), errors.Is(err, ca.ErrInvalidRequest):
		return nodeapi.JoinResponse{}, &xds.JoinError{Code: codes.InvalidArgument, Message: err.Error()}
	default:
		return nodeapi.JoinResponse{}, err
	}
	return nodeapi.JoinResponse{
		Node: res.Node.Name, Kind: res.Node.Kind, TrustDomain: res.TrustDomain,
		ChainPEM: string(res.ChainPEM), BundlePEM: string(res.BundlePEM), IssuersPEM: string(res.IssuersPEM), Serial: res.Serial, NotAfter: res.NotAfter,
	}, nil
}

// connections reports the xDS server's view of a node to the admin API.
type connections struct{ srv *xds.Server }

func (c connections) NodeConnection(node string) api.NodeConnection {
	st := c.srv.Status(node)
	out := api.NodeConnection{Connected: st.Streams > 0, Streams: st.Streams, Acked: st.Acked, NACKs: st.NACKs, LastNACK: st.LastNACK}
	if !st.LastSeen.IsZero() {
		t := st.LastSeen.UTC()
		out.LastSeen = &t
	}
	return out
}

func clip(s string) string { return text.Clip(s, 100) }

// rotationAcks tells a CA rotation how many nodes are connected and how
// many of those have not acknowledged their current secrets. While node
// configuration has changes not yet handed to the xDS server, every
// connected node counts as pending: it has not been sent them yet.
func rotationAcks(srv *xds.Server, configs *nodeconfig.Builder) authority.Acks {
	return func(ctx context.Context) (pending, connected int) {
		// Only a registered, active node has a stream open: the xDS
		// server closes a node's streams when it is removed.
		connected, pending = srv.Connected()
		if !configs.Idle() {
			pending = connected
		}
		return pending, max(connected, pending)
	}
}
