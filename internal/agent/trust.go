package agent

import (
	"context"
	"fmt"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"

	"github.com/meshca/meshca/sds"
)

// followTrust keeps an SDS stream to meshca open for the trust-domain
// secret (roots and CRLs) and reopens it with backoff when it breaks. The
// secret is the one meshca pushes to every proxy of the mesh, so a
// revocation reaches the agent as soon as it reaches any of them.
func (a *Agent) followTrust(ctx context.Context) error {
	attempt := 0
	for {
		got, err := a.trustStream(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if got {
			attempt = 0
		}
		attempt++
		wait := a.retryWait(attempt)
		a.log.Warn("trust bundle stream to meshca broke; the current bundle and CRL are still served", "attempt", attempt, "retry_in", wait.String(), logErr, err)
		select {
		case <-ctx.Done():
			return nil
		case <-a.cfg.Clock.After(wait):
		}
	}
}

// trustStream follows one SDS stream until it breaks. got reports whether
// it delivered anything.
func (a *Agent) trustStream(ctx context.Context) (got bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	name := sds.BundleName(a.cfg.TrustDomain)
	stream, err := secretv3.NewSecretDiscoveryServiceClient(a.cfg.Conn).StreamSecrets(ctx)
	if err != nil {
		return false, fmt.Errorf("open SDS stream: %w", err)
	}
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: a.cfg.Node}, TypeUrl: secretType, ResourceNames: []string{name}}
	if err := stream.Send(req); err != nil {
		return false, fmt.Errorf("SDS request: %w", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return got, fmt.Errorf("SDS stream: %w", err)
		}
		ack := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: a.cfg.Node}, TypeUrl: secretType, ResourceNames: []string{name},
			VersionInfo: resp.GetVersionInfo(), ResponseNonce: resp.GetNonce()}
		bundle, crl, err := trustOf(resp, name)
		if err != nil {
			// NACK: keep what was served before.
			ack.VersionInfo = req.GetVersionInfo()
			ack.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "the trust bundle does not parse"}
			a.log.Error("trust bundle from meshca refused; the previous one is still served", logErr, err)
		} else {
			got = true
			req.VersionInfo = resp.GetVersionInfo()
			if oldBundle, oldCRL := a.trust(); string(bundle) != string(oldBundle) || string(crl) != string(oldCRL) {
				a.setTrust(bundle, crl)
				a.log.Info("trust bundle or CRL changed", "version", resp.GetVersionInfo())
				// A CRL change may be a revoked identity of this node;
				// meshca pushes that on the identity watch when it is open.
				if !a.watching.Load() {
					a.wakeIdentities()
				}
			}
		}
		if err := stream.Send(ack); err != nil {
			return got, fmt.Errorf("SDS ack: %w", err)
		}
	}
}

// trust returns the bundle and CRL served now.
func (a *Agent) trust() (bundle, crl []byte) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.bundle, a.crl
}

// trustOf finds the bundle secret in resp and checks that it parses.
func trustOf(resp *discoveryv3.DiscoveryResponse, name string) (bundle, crl []byte, err error) {
	for _, r := range resp.GetResources() {
		s := new(tlsv3.Secret)
		if err := r.UnmarshalTo(s); err != nil {
			return nil, nil, fmt.Errorf("%w: resource of type %q", ErrBadAnswer, r.GetTypeUrl())
		}
		if s.GetName() != name {
			continue
		}
		vc := s.GetValidationContext()
		bundle, crl = vc.GetTrustedCa().GetInlineBytes(), vc.GetCrl().GetInlineBytes()
		// Parse it as meshca built it: a bundle that does not is refused.
		if _, err := sds.ValidationSecret(name, bundle, crl); err != nil {
			return nil, nil, fmt.Errorf("%w: %v", ErrBadAnswer, err)
		}
		return bundle, crl, nil
	}
	return nil, nil, fmt.Errorf("%w: no secret %q in the SDS answer", ErrBadAnswer, name)
}
