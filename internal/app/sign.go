package app

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"

	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/nodeapi"
	"github.com/meshca/meshca/xds"
)

// csrSigner adapts registry.SignCSR to the xDS server's SignCSR method and
// decides which gRPC code each refusal gets.
type csrSigner struct{ reg *registry.Registry }

var _ xds.CSRSigner = csrSigner{}

func (c csrSigner) SignCSR(ctx context.Context, node string, presented *x509.Certificate, ident string, csrDER []byte) (nodeapi.SignResponse, error) {
	res, err := c.reg.SignCSR(ctx, node, presented, ident, csrDER)
	switch {
	case err == nil:
	case errors.Is(err, registry.ErrRateLimited):
		return nodeapi.SignResponse{}, &xds.JoinError{Code: codes.ResourceExhausted, Message: err.Error()}
	case errors.Is(err, registry.ErrDenied):
		return nodeapi.SignResponse{}, &xds.JoinError{Code: codes.PermissionDenied, Message: err.Error()}
	case errors.Is(err, identity.ErrInvalidName), errors.Is(err, ca.ErrInvalidRequest):
		return nodeapi.SignResponse{}, &xds.JoinError{Code: codes.InvalidArgument, Message: err.Error()}
	default:
		return nodeapi.SignResponse{}, err
	}
	return nodeapi.SignResponse{Identity: res.Identity, ChainPEM: string(res.ChainPEM), BundlePEM: string(res.BundlePEM),
		Serial: res.Serial, NotAfter: res.NotAfter}, nil
}

var _ xds.AgentIdentities = csrSigner{}

// AgentIdentities lists the active identities of an active agent node.
func (c csrSigner) AgentIdentities(ctx context.Context, node string) ([]string, error) {
	n, err := c.reg.Node(ctx, node)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, &xds.JoinError{Code: codes.PermissionDenied, Message: "node is not registered"}
	} else if err != nil {
		return nil, err
	}
	if n.State != registry.StateActive {
		return nil, &xds.JoinError{Code: codes.PermissionDenied, Message: fmt.Sprintf("node %q was revoked", node)}
	}
	if !n.Agent {
		return nil, &xds.JoinError{Code: codes.PermissionDenied, Message: fmt.Sprintf("node %q is not an agent node (meshca node add --agent): meshca sends it its keys over SDS", node)}
	}
	var out []string
	for _, name := range n.Identities {
		st, err := c.reg.Identity(ctx, name)
		if errors.Is(err, registry.ErrNotFound) {
			continue
		} else if err != nil {
			return nil, err
		}
		if st.Identity.State == registry.StateActive && !st.Identity.Admin {
			out = append(out, name)
		}
	}
	slices.Sort(out)
	return out, nil
}
