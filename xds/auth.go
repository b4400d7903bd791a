package xds

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/nodeapi"
)

// Authenticator maps a client certificate that verified against meshca's
// issuing CAs to a registered, active node: the certificate must be the
// very one meshca recorded for it, issued by a CA that the store (not only
// Config.LoadedRoots) names as issuing. It audits its refusals. For a
// certificate meshca did issue to a node since revoked it returns the
// node's name and an error wrapping ErrNodeRevoked: the handshake then
// completes, so that every call can be refused saying the node was
// revoked.
type Authenticator interface {
	AuthenticateNode(ctx context.Context, leaf *x509.Certificate) (string, error)
}

type nodeKey struct{}

// nodeFrom returns the authenticated node bound to a stream's context.
func nodeFrom(ctx context.Context) (string, bool) {
	n, ok := ctx.Value(nodeKey{}).(string)
	return n, ok && n != ""
}

// tlsConfig asks for a client certificate but does not require one: the
// join service is reached before a node has a certificate. Every other
// method requires one (see authInterceptors). A certificate that is
// presented must verify and belong to a node, or the handshake fails. The
// gate clones it per connection to learn whether the node was revoked
// (see verifyConnection).
func (s *Server) tlsConfig() *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     []string{"h2"},
		GetCertificate: s.cfg.ServerCert,
		ClientAuth:     tls.RequestClientCert,
	}
}

// verifyConnection is a tls.Config's VerifyConnection: it accepts no
// certificate, or a node's; *revoked learns that the node was revoked.
func (s *Server) verifyConnection(revoked *bool) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return nil
		}
		_, rev, err := s.verifyNode(cs.PeerCertificates)
		*revoked = rev
		return err
	}
}

// verifyNode checks a presented chain against meshca's issuing CAs (not the
// roots: another CA under an organisation root must not make node
// certificates) and asks the Authenticator for the node. A certificate
// meshca issued to a node since revoked is accepted with revoked set.
func (s *Server) verifyNode(chain []*x509.Certificate) (node string, revoked bool, err error) {
	leaf := chain[0]
	if err := s.verifyChain(chain); err != nil {
		s.stats.authFailures.Add(1)
		s.cfg.Audit.RecordDenial(context.Background(), ActionAuth, "", "client certificate does not verify: "+text.Clip(err.Error(), 300))
		return "", false, fmt.Errorf("client certificate was not issued by meshca's CA: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), authTimeout)
	defer cancel()
	node, err = s.cfg.Auth.AuthenticateNode(ctx, leaf)
	if errors.Is(err, ErrNodeRevoked) {
		// The gate treats the connection as one without a node
		// certificate, on the join server, whose calls say why.
		return node, true, nil
	}
	if err != nil {
		s.stats.authFailures.Add(1)
		return "", false, err
	}
	return node, false, nil
}

// verifyChain verifies a presented chain against LoadedRoots, when set,
// and else, or when it does not verify there, against Roots.
func (s *Server) verifyChain(chain []*x509.Certificate) error {
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	verify := func(cas []*x509.Certificate) error {
		roots := x509.NewCertPool()
		for _, r := range cas {
			roots.AddCert(r)
		}
		_, err := chain[0].Verify(x509.VerifyOptions{
			Roots: roots, Intermediates: inter, CurrentTime: s.cfg.Clock.Now(),
			KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		})
		return err
	}
	if s.cfg.LoadedRoots != nil && verify(s.cfg.LoadedRoots()) == nil {
		return nil
	}
	return verify(s.cfg.Roots())
}

// settleWait bounds how long a call of a node this replica does not know
// waits for its node configuration to catch up with the store feed
// (Config.Settle). It bounds in-process work that normally takes
// milliseconds; it decides nothing about certificates, so it is real time.
const settleWait = 2 * time.Second

// knownOrSettled reports whether node is registered and active, waiting
// first, when it is not known yet, until this replica has built every
// change its feed handed over: a node that joined a moment ago is then
// known, and a revoked or removed one is still refused.
func (s *Server) knownOrSettled(ctx context.Context, node string) bool {
	if s.knownNode(node) {
		return true
	}
	if s.cfg.Settle == nil {
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, settleWait)
	defer cancel()
	s.cfg.Settle(ctx, node)
	return s.knownNode(node)
}

// revokedMessage is what a revoked node's calls are answered.
func revokedMessage(node string) string {
	return fmt.Sprintf("node %q was revoked (meshca node revoke): it can neither renew nor rejoin; register the machine under a new name with meshca node add", text.Clip(node, 100))
}

// peerNode derives the node of an authenticated connection. The chain was
// verified during the handshake; here the node name is read back from it.
func (s *Server) peerNode(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", errors.New("no peer")
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return "", errors.New("no client certificate")
	}
	leaf := info.State.PeerCertificates[0]
	if !s.cfg.Clock.Now().Before(leaf.NotAfter) {
		// A connection outlives the certificate it was made with.
		return "", errors.New("node certificate expired")
	}
	return nodeName(leaf)
}

// peerLeaf is the client certificate a call's connection was made with,
// or nil.
func peerLeaf(ctx context.Context) *x509.Certificate {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil
	}
	return info.State.PeerCertificates[0]
}

// nodeName is the node a node certificate (spiffe://<td>/node/NAME) names.
func nodeName(leaf *x509.Certificate) (string, error) {
	if len(leaf.URIs) != 1 {
		return "", errors.New("client certificate has no single SPIFFE ID")
	}
	name, ok := strings.CutPrefix(leaf.URIs[0].Path, "/node/")
	if !ok || name == "" || strings.Contains(name, "/") {
		return "", errors.New("client certificate is not a node certificate")
	}
	return name, nil
}

// authInterceptors require an authenticated node on every method but the
// join service, and bind the node into the context that go-control-plane
// hands to the callbacks.
func (s *Server) authInterceptors() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(s.authUnary), grpc.ChainStreamInterceptor(s.authStream)}
}

// authUnary binds the connection's node to a unary call (Join excepted).
func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
	if info.FullMethod == nodeapi.FullJoinMethod {
		return h(ctx, req)
	}
	node, err := s.peerNode(ctx)
	if err != nil {
		s.stats.unauthenticated.Add(1)
		return nil, status.Error(codes.Unauthenticated, "a valid node certificate is required (run meshca bootstrap, or meshca bootstrap renew)")
	}
	if !s.knownOrSettled(ctx, node) {
		s.stats.denied.Add(1)
		s.cfg.Audit.RecordDenial(ctx, ActionAuth, node, info.FullMethod+": node is not registered or was revoked")
		return nil, status.Error(codes.PermissionDenied, revokedMessage(node))
	}
	return h(context.WithValue(ctx, nodeKey{}, node), req)
}

// authStream binds the connection's node to a stream, and tracks the
// stream so that closeNode can end it.
func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, h grpc.StreamHandler) error {
	node, err := s.peerNode(ss.Context())
	if err != nil {
		s.stats.unauthenticated.Add(1)
		return status.Error(codes.Unauthenticated, "a valid node certificate is required (run meshca bootstrap, or meshca bootstrap renew)")
	}
	// The connection was authenticated when it was made; the node
	// may have been revoked since.
	if !s.knownOrSettled(ss.Context(), node) {
		s.stats.denied.Add(1)
		s.cfg.Audit.RecordDenial(ss.Context(), ActionAuth, node, info.FullMethod+": node is not registered or was revoked")
		return status.Error(codes.PermissionDenied, revokedMessage(node))
	}
	ctx, cancel := context.WithCancelCause(context.WithValue(ss.Context(), nodeKey{}, node))
	defer cancel(nil)
	id := s.trackStream(node, cancel)
	defer s.untrackStream(node, id)
	// A revocation between the check above and trackStream would
	// have missed this stream.
	if !s.knownNode(node) {
		return status.Error(codes.PermissionDenied, "node is not registered or was revoked")
	}
	err = h(srv, &boundStream{ServerStream: ss, ctx: ctx})
	if errors.Is(context.Cause(ctx), errNodeGone) {
		return status.Error(codes.PermissionDenied, "node was revoked or removed")
	}
	return err
}

// boundStream carries the authenticated node in its context. A revoked
// node's streams end when closeNode closes its connections (nodeCreds).
type boundStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (b *boundStream) Context() context.Context { return b.ctx }

var errNodeGone = errors.New("node revoked or removed")

// trackStream remembers how to end a node's stream, so that a revoked node
// can be cut off at once.
func (s *Server) trackStream(node string, cancel context.CancelCauseFunc) uint64 {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	s.nextStream++
	if s.cancels[node] == nil {
		s.cancels[node] = map[uint64]context.CancelCauseFunc{}
	}
	s.cancels[node][s.nextStream] = cancel
	return s.nextStream
}

func (s *Server) untrackStream(node string, id uint64) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	delete(s.cancels[node], id)
	if len(s.cancels[node]) == 0 {
		delete(s.cancels, node)
	}
}

// CloseNode ends every open stream and connection of a node, for example
// once its earlier node certificates are revoked: a connection made with
// one of them must not outlive it. A connection still in its handshake is
// not affected.
func (s *Server) CloseNode(node string) int { return s.closeNode(node) }

// closeNode ends every open stream of a node.
func (s *Server) closeNode(node string) int {
	s.streamsMu.Lock()
	for _, cancel := range s.cancels[node] {
		cancel(errNodeGone)
	}
	n := len(s.cancels[node])
	s.streamsMu.Unlock()
	s.conns.close(node)
	return n
}
