// Package workload serves the SPIFFE Workload API (the SpiffeWorkloadAPI
// gRPC service of go-spiffe v2.9.0's proto/spiffe/workload) to the
// processes of one node, on a Unix socket: FetchX509SVID and
// FetchX509Bundles stream the current X.509-SVIDs, trust bundle and CRLs,
// the whole state in every message, and push a new message whenever the
// Source changes (rotation, a new bundle, a new CRL). The JWT and WIT
// methods answer Unimplemented.
//
// There is no client authentication in the protocol: the caller is the
// process at the other end of the socket, identified by its peer
// credentials (internal/peercred), and receives only the SVIDs whose
// selectors it matches (internal/workload/attest). A caller that matches
// none is refused with PermissionDenied and reported through the Gate.
// Every request must carry the metadata header workload.spiffe.io: true
// (InvalidArgument otherwise), which keeps a browser or an SSRF-driven
// HTTP client from reaching the API through a socket proxy.
//
// # Caveats
//
// A message is sent only when what the caller would receive differs from
// the previous message on the stream, so a Source change that concerns
// other callers does not reach this one. A key that x509.MarshalPKCS8PrivateKey
// cannot encode (a Signer held in hardware) cannot be served: that SVID
// is left out and logged.
package workload

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/workload/attest"
)

// Log attribute keys.
const (
	logSPIFFEID = "spiffe_id"
	logErr      = "err"
)

// Header is the metadata key every Workload API request must carry with
// the value "true".
const Header = "workload.spiffe.io"

// SVID is one identity's X.509-SVID as a Source holds it.
type SVID struct {
	SPIFFEID  string
	CertChain [][]byte // DER, leaf first, then intermediates
	Key       crypto.Signer
	// Selectors name the local processes that may have it (attest); none
	// means any local caller.
	Selectors []string
}

// State is everything the Workload API serves at one moment.
type State struct {
	TrustDomain spiffeid.TrustDomain
	SVIDs       []SVID
	Bundle      []*x509.Certificate // the trust domain's roots
	CRLs        [][]byte            // DER
}

// Source gives the current State. Current returns it with a channel that
// is closed once a newer State is available; the server then calls
// Current again. It must be safe for concurrent use, must not block, and
// the State it returns must not be changed afterwards.
type Source interface {
	Current() (State, <-chan struct{})
}

// Config configures a Server.
type Config struct {
	Source Source
	// Gate refuses and reports callers that match no SVID; nil means a
	// Gate that logs to Logger (rate-limited) and calls Denied. Share one
	// Gate with the SDS socket to report both in one place.
	Gate *attest.Gate
	// Denied is the audit hook of the default Gate: called for every
	// refusal, unthrottled; it must not block. Ignored with Gate set.
	Denied func(c peercred.Caller, reason string)
	Logger *slog.Logger // nil discards
}

// Server implements the Workload API.
type Server struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	src  Source
	gate *attest.Gate
	log  *slog.Logger
}

var _ workload.SpiffeWorkloadAPIServer = (*Server)(nil)

// ErrConfig marks an unusable Config.
var ErrConfig = errors.New("workload: invalid config")

// New returns a Server.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil {
		return nil, fmt.Errorf("%w: a Source is required", ErrConfig)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Gate == nil {
		cfg.Gate = attest.NewGate(attest.GateConfig{Logger: cfg.Logger, Denied: cfg.Denied})
	}
	return &Server{src: cfg.Source, gate: cfg.Gate, log: cfg.Logger}, nil
}

// Register adds the service to a gRPC server, which must be built with
// peercred.New() as its credentials.
func (s *Server) Register(r grpc.ServiceRegistrar) {
	workload.RegisterSpiffeWorkloadAPIServer(r, s)
}

// Limits of Serve's gRPC server. Requests of this API are empty or hold a
// few names; a workload needs a handful of streams.
const (
	MaxRecvMsgSize       = 16 << 10
	MaxConcurrentStreams = 64 // per connection
)

// Serve serves the Workload API on l, a Unix socket listener, until ctx
// ends; streams in progress are then closed. It returns nil on ctx's end.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	g := grpc.NewServer(grpc.Creds(peercred.New()),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize), grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.ChainStreamInterceptor(s.gate.StreamInterceptor()),
		grpc.ChainUnaryInterceptor(s.gate.UnaryInterceptor()))
	s.Register(g)
	stop := context.AfterFunc(ctx, g.Stop)
	defer stop()
	err := g.Serve(l)
	if ctx.Err() != nil {
		return nil
	}
	if err != nil {
		return fmt.Errorf("workload api: serve: %w", err)
	}
	return nil
}

// header refuses a request without the security header, as SPIRE does.
func header(ctx context.Context) error {
	md, _ := metadata.FromIncomingContext(ctx)
	if v := md.Get(Header); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request: set metadata "+Header+": true (go-spiffe's workloadapi client does)")
	}
	return nil
}

// FetchX509SVID streams the SVIDs the caller may have.
func (s *Server) FetchX509SVID(_ *workload.X509SVIDRequest, stream grpc.ServerStreamingServer[workload.X509SVIDResponse]) error {
	ctx := stream.Context()
	if err := header(ctx); err != nil {
		return err
	}
	caller, err := s.gate.Caller(ctx)
	if err != nil {
		return err
	}
	return watch(ctx, s.src, func(st State) (*workload.X509SVIDResponse, error) {
		return s.svidResponse(caller, st)
	}, stream.Send)
}

// FetchX509Bundles streams the trust bundle and CRLs to any local caller
// that matches at least one SVID: a bundle is public, but a process that
// may have nothing here has no business with this API either.
func (s *Server) FetchX509Bundles(_ *workload.X509BundlesRequest, stream grpc.ServerStreamingServer[workload.X509BundlesResponse]) error {
	ctx := stream.Context()
	if err := header(ctx); err != nil {
		return err
	}
	caller, err := s.gate.Caller(ctx)
	if err != nil {
		return err
	}
	return watch(ctx, s.src, func(st State) (*workload.X509BundlesResponse, error) {
		if len(allowed(caller, st.SVIDs)) == 0 {
			return nil, s.gate.Deny(caller, "x509 bundles", noSVID)
		}
		return &workload.X509BundlesResponse{
			Bundles: map[string][]byte{st.TrustDomain.IDString(): concat(st.Bundle)},
			Crl:     st.CRLs,
		}, nil
	}, stream.Send)
}

const noSVID = "no identity assigned to this node is meant for the calling process (its uid, gid or executable matches no assignment's selectors)"

// jwtUnimplemented is the answer of every JWT method.
func jwtUnimplemented(ctx context.Context) error {
	if err := header(ctx); err != nil {
		return err
	}
	return status.Error(codes.Unimplemented, "meshca serves X.509-SVIDs only: JWT-SVIDs are not implemented; use FetchX509SVID and mTLS")
}

// FetchJWTSVID answers Unimplemented.
func (s *Server) FetchJWTSVID(ctx context.Context, _ *workload.JWTSVIDRequest) (*workload.JWTSVIDResponse, error) {
	return nil, jwtUnimplemented(ctx)
}

// FetchJWTBundles answers Unimplemented.
func (s *Server) FetchJWTBundles(_ *workload.JWTBundlesRequest, stream grpc.ServerStreamingServer[workload.JWTBundlesResponse]) error {
	return jwtUnimplemented(stream.Context())
}

// ValidateJWTSVID answers Unimplemented.
func (s *Server) ValidateJWTSVID(ctx context.Context, _ *workload.ValidateJWTSVIDRequest) (*workload.ValidateJWTSVIDResponse, error) {
	return nil, jwtUnimplemented(ctx)
}

// FetchWITSVID answers Unimplemented.
func (s *Server) FetchWITSVID(_ *workload.WITSVIDRequest, stream grpc.ServerStreamingServer[workload.WITSVIDResponse]) error {
	return witUnimplemented(stream.Context())
}

// FetchWITBundles answers Unimplemented.
func (s *Server) FetchWITBundles(_ *workload.WITBundlesRequest, stream grpc.ServerStreamingServer[workload.WITBundlesResponse]) error {
	return witUnimplemented(stream.Context())
}

func witUnimplemented(ctx context.Context) error {
	if err := header(ctx); err != nil {
		return err
	}
	return status.Error(codes.Unimplemented, "meshca serves X.509-SVIDs only: WIT-SVIDs are not implemented; use FetchX509SVID and mTLS")
}

// svidResponse is what caller receives of st.
func (s *Server) svidResponse(caller peercred.Caller, st State) (*workload.X509SVIDResponse, error) {
	svids := allowed(caller, st.SVIDs)
	if len(svids) == 0 {
		return nil, s.gate.Deny(caller, "x509 svid", noSVID)
	}
	bundle := concat(st.Bundle)
	resp := &workload.X509SVIDResponse{Crl: st.CRLs}
	for _, sv := range svids {
		key, err := x509.MarshalPKCS8PrivateKey(sv.Key)
		if err != nil {
			s.log.Error("cannot serve an SVID whose key does not encode as PKCS#8", logSPIFFEID, sv.SPIFFEID, logErr, err)
			continue
		}
		resp.Svids = append(resp.Svids, &workload.X509SVID{
			SpiffeId:    sv.SPIFFEID,
			X509Svid:    bytes.Join(sv.CertChain, nil),
			X509SvidKey: key,
			Bundle:      bundle,
		})
	}
	if len(resp.Svids) == 0 {
		return nil, status.Error(codes.Unavailable, "no SVID can be served right now; retry")
	}
	return resp, nil
}

// allowed returns the SVIDs caller matches.
func allowed(caller peercred.Caller, svids []SVID) []SVID {
	var out []SVID
	for _, sv := range svids {
		if attest.Match(caller, sv.Selectors) {
			out = append(out, sv)
		}
	}
	return out
}

func concat(certs []*x509.Certificate) []byte {
	var b []byte
	for _, c := range certs {
		b = append(b, c.Raw...)
	}
	return b
}

// watch sends build's answer for the current state, then again each time
// the state changes and the answer with it, until ctx ends or build fails.
func watch[M proto.Message](ctx context.Context, src Source, build func(State) (M, error), send func(M) error) error {
	var last M
	sent := false
	for {
		st, changed := src.Current()
		msg, err := build(st)
		if err != nil {
			return err
		}
		if !sent || !proto.Equal(msg, last) {
			if err := send(msg); err != nil {
				return err
			}
			last, sent = msg, true
		}
		select {
		case <-ctx.Done():
			return nil
		case <-changed:
		}
	}
}
