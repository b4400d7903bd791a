package xds

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/service/accesslog/v3"
	clusterservice "github.com/envoyproxy/go-control-plane/envoy/service/cluster/v3"
	discoverygrpc "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	endpointservice "github.com/envoyproxy/go-control-plane/envoy/service/endpoint/v3"
	listenerservice "github.com/envoyproxy/go-control-plane/envoy/service/listener/v3"
	metricsv3 "github.com/envoyproxy/go-control-plane/envoy/service/metrics/v3"
	routeservice "github.com/envoyproxy/go-control-plane/envoy/service/route/v3"
	secretservice "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/telemetry"
)

// Limits of the gRPC server, set deliberately rather than left at grpc-go's
// defaults (120s handshake, unlimited streams, 4 MiB messages).
const (
	ConnectionTimeout    = 5 * time.Second
	MaxConcurrentStreams = 100
	MaxRecvMsgSize       = 2 << 20 // Envoy sends all its stats in one metrics message
	keepaliveTime        = 30 * time.Second
	keepaliveTimeout     = 10 * time.Second
	keepaliveMinTime     = 10 * time.Second
	authTimeout          = 5 * time.Second
	shutdownGrace        = 2 * time.Second
	readBufferSize       = 4 << 10
)

// DenialRecorder writes an audit record for a refused request.
type DenialRecorder interface {
	RecordDenial(ctx context.Context, action, node, detail string)
}

// Config configures a Server.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Source      Source         // required
	Auth        Authenticator  // required
	Joiner      Joiner         // required
	Audit       DenialRecorder // required
	// Roots returns the CAs a node certificate must be issued by: meshca's
	// issuing CAs, not the roots above them. Called on every handshake.
	Roots func() []*x509.Certificate // required
	// ServerCert returns meshca's own server certificate (renewed by the
	// caller).
	ServerCert func(*tls.ClientHelloInfo) (*tls.Certificate, error) // required
	Clock      clock.Clock
	Logger     *slog.Logger
	// OnPush, when set, learns how long a node took to acknowledge a new
	// version of a resource type; OnNACK learns every rejection. Both run
	// on the stream's goroutine and must be quick.
	OnPush func(typeURL string, d time.Duration)
	OnNACK func(node, typeURL, message string)
	// Telemetry, when set, receives what proxies send to the access-log
	// and metrics services.
	Telemetry *telemetry.Store
}

// Server is the xDS and node join server.
type Server struct {
	cfg   Config
	log   *slog.Logger
	cache cachev3.SnapshotCache
	cb    *callbacks
	grpc  *grpc.Server

	streamsMu  sync.Mutex
	nextStream uint64
	cancels    map[string]map[uint64]context.CancelCauseFunc // node -> open streams
	conns      nodeConns                                     // node -> open connections

	// refreshLocks serialize refreshes of one node (striped by name), so
	// its snapshots are set in order while other nodes refresh in parallel.
	refreshLocks [64]sync.Mutex
	allowedMu    sync.RWMutex
	allowed      map[string]map[string]bool              // node -> secret names it may request
	sums         map[string]map[string][sha256.Size]byte // node -> its secrets' digests (see swapBundle)
	former       map[string]map[string]bool              // node -> names it could request before (served nothing now)

	stats   stats
	serving atomic.Bool
}

type stats struct {
	denied, unauthenticated, authFailures, invalid, joins, joinRefused atomic.Int64
}

// Stats are counters since start.
type Stats struct {
	Denied          int64 // requests refused with PermissionDenied
	Unauthenticated int64 // calls without a node certificate
	AuthFailures    int64 // handshakes refused
	InvalidConfigs  int64 // snapshots not published because they failed validation
	Joins           int64
	JoinsRefused    int64
}

// New validates cfg and builds the server.
func New(cfg Config) (*Server, error) {
	if cfg.Source == nil || cfg.Auth == nil || cfg.Joiner == nil || cfg.Audit == nil || cfg.Roots == nil || cfg.ServerCert == nil {
		return nil, errors.New("xds: Source, Auth, Joiner, Audit, Roots and ServerCert are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, allowed: map[string]map[string]bool{}, sums: map[string]map[string][sha256.Size]byte{}, former: map[string]map[string]bool{}, cancels: map[string]map[uint64]context.CancelCauseFunc{}}
	s.cache = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	s.cb = newCallbacks(s)
	opts := append([]grpc.ServerOption{
		grpc.Creds(&nodeCreds{TransportCredentials: credentials.NewTLS(s.tlsConfig()), s: s}),
		grpc.ConnectionTimeout(ConnectionTimeout),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		// Proxies send small requests and mostly sit idle: gRPC's 32 KiB
		// read buffer per connection was most of an idle stream's memory.
		// Write buffers go back to a shared pool between flushes.
		grpc.ReadBufferSize(readBufferSize),
		grpc.SharedWriteBuffer(true),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true}),
	}, s.authInterceptors()...)
	s.grpc = grpc.NewServer(opts...)
	xs := serverv3.NewServer(context.Background(), s.cache, s.cb)
	discoverygrpc.RegisterAggregatedDiscoveryServiceServer(s.grpc, xs)
	secretservice.RegisterSecretDiscoveryServiceServer(s.grpc, xs)
	listenerservice.RegisterListenerDiscoveryServiceServer(s.grpc, xs)
	routeservice.RegisterRouteDiscoveryServiceServer(s.grpc, xs)
	clusterservice.RegisterClusterDiscoveryServiceServer(s.grpc, xs)
	endpointservice.RegisterEndpointDiscoveryServiceServer(s.grpc, xs)
	accesslogv3.RegisterAccessLogServiceServer(s.grpc, sinks{s: s})
	metricsv3.RegisterMetricsServiceServer(s.grpc, sinks{s: s})
	s.registerJoin()
	return s, nil
}

// Run serves on ln until ctx is done, then stops gracefully: open xDS
// streams never end by themselves, so after a short grace (in-flight joins
// finish) they are cut and clients reconnect elsewhere or later.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	errc := make(chan error, 1)
	s.serving.Store(true)
	defer s.serving.Store(false)
	go func() { errc <- s.grpc.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("xds: %w", err)
	case <-ctx.Done():
	}
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		s.grpc.Stop()
	}
	return nil
}

// Serving reports whether Run is serving.
func (s *Server) Serving() bool { return s.serving.Load() }

// Status returns what the server knows of a node's connections.
func (s *Server) Status(node string) NodeStatus { return s.cb.Status(node) }

// Pending counts the connected nodes that subscribe to secrets but have not
// yet acknowledged their current ones (for example a new trust bundle).
func (s *Server) Pending() int { return s.cb.pending() }

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	return Stats{
		Denied: s.stats.denied.Load(), Unauthenticated: s.stats.unauthenticated.Load(),
		AuthFailures: s.stats.authFailures.Load(), InvalidConfigs: s.stats.invalid.Load(),
		Joins: s.stats.joins.Load(), JoinsRefused: s.stats.joinRefused.Load(),
	}
}
