package app

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/nodeapi"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/rotation"
	"github.com/meshca/meshca/sds"
	"github.com/meshca/meshca/xds"
)

// xdsSource turns the registry's nodes and credentials into the resources
// each node may receive.
type xdsSource struct {
	reg    *registry.Registry
	td     spiffeid.TrustDomain
	bundle *sharedBundle
}

func newXDSSource(reg *registry.Registry, td spiffeid.TrustDomain) xdsSource {
	return xdsSource{reg: reg, td: td, bundle: &sharedBundle{}}
}

// sharedBundle is the trust-bundle secret every node receives, built once
// per bundle and CRL rather than once per node: one value shared by all
// snapshots, which the xDS server then validates and hashes once.
type sharedBundle struct {
	mu          sync.Mutex
	bundle, crl []byte
	secret      types.Resource
}

func (b *sharedBundle) get(td spiffeid.TrustDomain, bundlePEM, crl []byte) (types.Resource, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.secret != nil && bytes.Equal(b.bundle, bundlePEM) && bytes.Equal(b.crl, crl) {
		return b.secret, nil
	}
	secret, err := sds.ValidationSecret(sds.BundleName(td), bundlePEM, crl)
	if err != nil {
		return nil, err
	}
	b.bundle, b.crl, b.secret = bundlePEM, crl, secret
	return secret, nil
}

var _ xds.Source = xdsSource{}

func (a xdsSource) NodeNames(ctx context.Context) ([]string, error) {
	ns, err := a.reg.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(ns))
	for _, n := range ns {
		names = append(names, n.Name)
	}
	return names, nil
}

func (a xdsSource) Resources(ctx context.Context, node string) (map[string][]types.Resource, error) {
	n, creds, err := a.reg.NodeCredentials(ctx, node)
	if errors.Is(err, registry.ErrNotFound) {
		return nil, xds.ErrUnknownNode
	}
	if err != nil {
		return nil, err
	}
	if n.State != store.StateActive {
		return nil, xds.ErrUnknownNode
	}
	bundle, err := a.TrustBundle(ctx)
	if err != nil {
		return nil, fmt.Errorf("trust bundle secret: %w", err)
	}
	secrets := []types.Resource{bundle}
	for _, c := range creds {
		s, err := sds.TLSSecret(c.SPIFFEID, c.ChainPEM, c.KeyPEM)
		if err != nil {
			return nil, fmt.Errorf("secret of identity %q: %w", c.Identity, err)
		}
		secrets = append(secrets, s)
	}
	out := map[string][]types.Resource{resource.SecretType: secrets}
	routing, err := a.reg.NodeMesh(n)
	if err != nil {
		// Apply and assignment changes are checked against the mesh, so
		// this means a bug or a stored mesh that no longer fits: keep the
		// node's last good snapshot rather than withdraw its listeners.
		return nil, fmt.Errorf("mesh configuration of node %q: %w", node, err)
	}
	for typeURL, rs := range routing.ByType {
		out[typeURL] = append(out[typeURL], rs...)
	}
	return out, nil
}

func (a xdsSource) TrustBundle(context.Context) (types.Resource, error) {
	return a.bundle.get(a.td, a.reg.CA().BundlePEM(), a.reg.CRL())
}

func (a xdsSource) Withdrawn(ctx context.Context, node string) ([]string, error) {
	return a.reg.WithdrawnSecrets(ctx, node)
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
type joiner struct{ reg *registry.Registry }

var _ xds.Joiner = joiner{}

func (j joiner) Join(ctx context.Context, node, token string, csrDER []byte) (nodeapi.JoinResponse, error) {
	res, err := j.reg.Join(ctx, node, token, csrDER, "join:"+clip(node))
	return joinResponse(res, err)
}

func (j joiner) Renew(ctx context.Context, node string, csrDER []byte) (nodeapi.JoinResponse, error) {
	res, err := j.reg.RenewNode(ctx, node, csrDER)
	return joinResponse(res, err)
}

func joinResponse(res registry.Joined, err error) (nodeapi.JoinResponse, error) {
	switch {
	case err == nil:
	case errors.Is(err, registry.ErrRateLimited):
		return nodeapi.JoinResponse{}, &xds.JoinError{Code: codes.ResourceExhausted, Message: err.Error()}
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
// many of those have not acknowledged their current secrets.
func rotationAcks(reg *registry.Registry, srv *xds.Server) registry.Acks {
	return func(ctx context.Context) (pending, connected int) {
		pending = srv.Pending()
		nodes, err := reg.Nodes(ctx)
		if err != nil {
			return pending, pending
		}
		for _, n := range nodes {
			if srv.Status(n.Name).Streams > 0 {
				connected++
			}
		}
		return pending, max(connected, pending)
	}
}

// renewals adapts the registry to the rotation loop.
type renewals struct{ reg *registry.Registry }

var (
	_ rotation.Source  = renewals{}
	_ rotation.Renewer = renewals{}
)

func (r renewals) Certs(ctx context.Context) ([]rotation.Cert, error) {
	ids, err := r.reg.Identities(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]rotation.Cert, 0, len(ids))
	for _, st := range ids {
		if st.Identity.State != store.StateActive || st.Cert == nil {
			continue
		}
		out = append(out, rotation.Cert{Name: st.Identity.Name, Serial: st.Cert.Serial, NotBefore: st.Cert.NotBefore, NotAfter: st.Cert.NotAfter,
			Stale: r.reg.Stale(st.Cert.IssuerSerial)})
	}
	return out, nil
}

func (r renewals) Renew(ctx context.Context, name string) (rotation.Cert, error) {
	st, err := r.reg.ReissueIdentity(ctx, name, "rotation")
	if err != nil {
		return rotation.Cert{}, err
	}
	return rotation.Cert{Name: name, Serial: st.Cert.Serial, NotBefore: st.Cert.NotBefore, NotAfter: st.Cert.NotAfter}, nil
}
