package app

import (
	"context"
	"crypto/x509"
	"errors"

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
		Serial: res.Serial, NotAfter: res.NotAfter, IssuerSerial: res.IssuerSerial}, nil
}

var _ xds.AgentIdentities = csrSigner{}

// AgentIdentities adapts registry.AgentIdentities to the xDS server's
// Identities method, with the CA meshca issues from now; a refusal is
// PermissionDenied.
func (c csrSigner) AgentIdentities(ctx context.Context, node string) (nodeapi.IdentitiesResponse, error) {
	ids, err := c.reg.AgentIdentities(ctx, node)
	if errors.Is(err, registry.ErrDenied) || errors.Is(err, registry.ErrNotFound) {
		return nodeapi.IdentitiesResponse{}, &xds.JoinError{Code: codes.PermissionDenied, Message: err.Error()}
	}
	if err != nil {
		return nodeapi.IdentitiesResponse{}, err
	}
	issuer, err := c.reg.CurrentIssuer(ctx)
	if err != nil {
		return nodeapi.IdentitiesResponse{}, err
	}
	out := make([]nodeapi.AssignedIdentity, 0, len(ids))
	for _, id := range ids {
		out = append(out, nodeapi.AssignedIdentity{Name: id.Name, SPIFFEID: id.SPIFFEID, Selectors: id.Selectors})
	}
	return nodeapi.IdentitiesResponse{Identities: out, IssuerSerial: issuer}, nil
}
