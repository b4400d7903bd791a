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
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	dto "github.com/prometheus/client_model/go"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/status"
	"google.golang.org/grpc/tap"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/nodeapi"
)

// Limits of the nodes' gRPC server, set deliberately rather than left at
// grpc-go's defaults (120s handshake, unlimited streams, 4 MiB messages,
// 16 MiB of headers). Peers without a node certificate never reach it (see
// Limits).
const (
	ConnectionTimeout    = 5 * time.Second // default of Limits.HandshakeTimeout
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

// Clock tells the server the time: certificate validity at the
// handshake, last-seen times, push latencies. internal/clock's clocks
// satisfy it.
type Clock interface {
	Now() time.Time
}

// AccessLog is one request or TCP connection a proxy reported to the
// access-log service, its strings clipped to a bounded length.
type AccessLog struct {
	Time      time.Time
	Method    string
	Authority string
	Path      string
	Status    uint32
	Duration  string
	Upstream  string
	Peer      string // downstream address
	Protocol  string
}

// TelemetrySink files what authenticated proxies send to the access-log and
// metrics services. Its methods are called concurrently, from the streams
// of many nodes, and must not block for long. The server calls Forget when
// a node is removed and files nothing for it afterwards.
type TelemetrySink interface {
	AddLogs(node string, logs []AccessLog)
	SetStats(node string, at time.Time, families []*dto.MetricFamily)
	Forget(node string)
}

// Config configures a Server.
type Config struct {
	TrustDomain spiffeid.TrustDomain
	Auth        Authenticator  // required
	Joiner      Joiner         // required
	Audit       DenialRecorder // required
	// Roots returns the CAs a node certificate must be issued by: meshca's
	// issuing CAs, not the roots above them. Called on every handshake.
	Roots func() []*x509.Certificate // required
	// Settle, when set, waits until this replica's node configuration
	// covers every change its store feed has handed over for node, or
	// until ctx ends (nodeconfig.Builder.WaitNode). A node that connects
	// at once after joining may arrive before its first build: the server
	// waits here, at most settleWait, before refusing a node it does not
	// know.
	Settle func(ctx context.Context, node string)
	// LoadedRoots, when set, returns the same CAs without reading the
	// store (as the change feed last brought them): a chain is verified
	// against them first, and against Roots only when it does not verify,
	// so that a CA new on another replica is not refused while the feed
	// catches up. The Authenticator must then check the leaf's issuer
	// against the store, since LoadedRoots may still hold a CA retired
	// since.
	LoadedRoots func() []*x509.Certificate
	// ServerCert returns meshca's own server certificate (renewed by the
	// caller).
	ServerCert func(*tls.ClientHelloInfo) (*tls.Certificate, error) // required
	Clock      Clock                                                // default the wall clock
	Logger     *slog.Logger
	// OnPush, when set, learns how long a node took to acknowledge a new
	// version of a resource type; OnNACK learns every rejection. Both run
	// on the stream's goroutine and must be quick.
	OnPush func(typeURL string, d time.Duration)
	OnNACK func(node, typeURL, message string)
	// Telemetry, when set, receives what proxies send to the access-log
	// and metrics services.
	Telemetry TelemetrySink
	// Limits bound connections and what peers without a node certificate
	// can make the server hold.
	Limits Limits
	// Signer signs agent nodes' CSRs (SignCSR); nil answers Unimplemented.
	Signer CSRSigner
	// Identities lists agent nodes' identities (Identities); nil answers
	// Unimplemented.
	Identities AgentIdentities
}

// Server is the xDS and node join server.
type Server struct {
	cfg   Config
	log   *slog.Logger
	cache cachev3.SnapshotCache
	cb    *callbacks
	grpc  *grpc.Server // nodes
	joins *grpc.Server // peers without a node certificate: Join only

	limits Limits
	lim    *limiter
	signs  *signGate

	streamsMu  sync.Mutex
	nextStream uint64
	cancels    map[string]map[uint64]context.CancelCauseFunc // node -> open streams
	conns      nodeConns                                     // node -> open connections

	// refreshLocks serialize updates of one node (striped by name), so
	// its snapshots are set in order while other nodes update in parallel.
	refreshLocks [64]sync.Mutex
	trustMu      sync.Mutex
	trust        types.Resource // the trust-bundle secret every node receives
	trustSum     [sha256.Size]byte
	allowedMu    sync.RWMutex
	allowed      map[string]map[string]bool                      // node -> secret names it may request
	sums         map[string]map[string][sha256.Size]byte         // node -> its secrets' digests (see swapBundle)
	routeSums    map[string]map[types.Resource][sha256.Size]byte // node -> digests of its other resources (see knownDigests)
	former       map[string]map[string]bool                      // node -> names it could request before (served nothing now)

	watches identityWatches // open WatchIdentities streams

	stats   stats
	serving atomic.Bool
}

type stats struct {
	denied, unauthenticated, authFailures, invalid, joins, joinRefused atomic.Int64
	connRefused, connEvicted, connPerAddress, connPerNode              atomic.Int64
}

// Stats are counters since start, and the connections open now.
type Stats struct {
	Denied          int64 // requests refused with PermissionDenied
	Unauthenticated int64 // calls without a node certificate
	AuthFailures    int64 // handshakes refused
	InvalidConfigs  int64 // snapshots not published because they failed validation
	Joins           int64
	JoinsRefused    int64
	// Connections closed at once because nodes held every slot
	// (MaxConnections), closed to make room for a newer one
	// (unauthenticated only), and closed for their address's limit.
	ConnectionsRefused, ConnectionsEvicted, ConnectionsOverAddressLimit int64
	// Connections of a node closed at once because it held
	// maxConnectionsPerNode already.
	ConnectionsOverNodeLimit int64
	// Agent CSRs refused at once because Limits.MaxSignQueue (or the
	// node's share) was full, and those whose caller went away before
	// they were signed or stored.
	CSRsRefused, CSRsAbandoned int64
	// Open connections now, and how many of them have no node
	// certificate (handshakes included).
	OpenConnections, OpenUnauthenticated int
	// The most of each that were open at once since the server was made:
	// never more than Limits.MaxConnections and MaxUnauthenticated.
	PeakConnections, PeakUnauthenticated int
}

// New validates cfg and builds the server.
func New(cfg Config) (*Server, error) {
	if cfg.Auth == nil || cfg.Joiner == nil || cfg.Audit == nil || cfg.Roots == nil || cfg.ServerCert == nil {
		return nil, errors.New("xds: Auth, Joiner, Audit, Roots and ServerCert are required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, allowed: map[string]map[string]bool{}, sums: map[string]map[string][sha256.Size]byte{}, routeSums: map[string]map[types.Resource][sha256.Size]byte{}, former: map[string]map[string]bool{}, cancels: map[string]map[uint64]context.CancelCauseFunc{}}
	s.limits = cfg.Limits.withDefaults()
	s.lim = newLimiter(s.limits)
	s.signs = newSignGate(s.limits.MaxSigning, s.limits.MaxSignQueue)
	s.cache = cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil)
	s.cb = newCallbacks(s)
	enforce := grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: keepaliveMinTime, PermitWithoutStream: true})
	opts := append([]grpc.ServerOption{
		grpc.Creds(handshaken{}),
		grpc.ConnectionTimeout(s.limits.HandshakeTimeout),
		grpc.MaxConcurrentStreams(MaxConcurrentStreams),
		grpc.MaxRecvMsgSize(MaxRecvMsgSize),
		grpc.MaxHeaderListSize(maxHeaderListSize),
		// Proxies send small requests and mostly sit idle: gRPC's 32 KiB
		// read buffer per connection was most of an idle stream's memory.
		// Write buffers go back to a shared pool between flushes.
		grpc.ReadBufferSize(readBufferSize),
		grpc.SharedWriteBuffer(true),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, MaxConnectionIdle: s.limits.IdleTimeout}),
		enforce,
	}, s.authInterceptors()...)
	s.grpc = grpc.NewServer(opts...)
	// Join carries no node certificate, so anyone can call it: its server
	// holds a few small messages per connection and refuses every other
	// method from the headers, before reading any body.
	s.joins = grpc.NewServer(
		grpc.Creds(handshaken{}),
		grpc.ConnectionTimeout(s.limits.HandshakeTimeout),
		grpc.MaxConcurrentStreams(joinMaxStreams),
		grpc.MaxRecvMsgSize(joinMaxRecvMsgSize),
		grpc.MaxHeaderListSize(joinMaxHeaderListSize),
		grpc.StaticStreamWindowSize(joinWindow),
		grpc.StaticConnWindowSize(joinWindow),
		grpc.ReadBufferSize(readBufferSize),
		grpc.WriteBufferSize(readBufferSize), // a join answer is a few KiB
		grpc.SharedWriteBuffer(true),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			Time: keepaliveTime, Timeout: keepaliveTimeout,
			MaxConnectionIdle: s.limits.UnauthenticatedIdleTimeout,
			MaxConnectionAge:  s.limits.UnauthenticatedMaxAge, MaxConnectionAgeGrace: s.limits.UnauthenticatedMaxAge / 4,
		}),
		enforce,
		grpc.InTapHandle(s.joinTap),
	)
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
	s.joins.RegisterService(&grpc.ServiceDesc{
		ServiceName: nodeapi.Service, HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: nodeapi.JoinMethod, Handler: unary(nodeapi.FullJoinMethod, s.join)}},
	}, struct{}{})
	return s, nil
}

// joinTap refuses, on the join server, every method but Join before any of
// its body is read.
func (s *Server) joinTap(ctx context.Context, info *tap.Info) (context.Context, error) {
	if info.FullMethodName == nodeapi.FullJoinMethod {
		return ctx, nil
	}
	if node, err := s.peerNode(ctx); err == nil {
		// Only a revoked node's certificate leads here with a certificate.
		s.stats.denied.Add(1)
		s.cfg.Audit.RecordDenial(ctx, ActionAuth, node, info.FullMethodName+": node is not registered or was revoked")
		return ctx, status.Error(codes.PermissionDenied, revokedMessage(node))
	}
	s.stats.unauthenticated.Add(1)
	return ctx, status.Error(codes.Unauthenticated, errNeedNodeCert)
}

const errNeedNodeCert = "a valid node certificate is required (run meshca bootstrap, or meshca bootstrap renew)"

// Run serves on ln until ctx is done, then stops gracefully: open xDS
// streams never end by themselves, so after a short grace (in-flight joins
// finish) they are cut and clients reconnect elsewhere or later.
func (s *Server) Run(ctx context.Context, ln net.Listener) error {
	g := newGate(s, ln)
	errc := make(chan error, 3)
	s.serving.Store(true)
	defer s.serving.Store(false)
	go func() { errc <- g.run() }()
	go func() { errc <- s.grpc.Serve(g.nodes) }()
	go func() { errc <- s.joins.Serve(g.joins) }()
	var err error
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	g.close()
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, srv := range []*grpc.Server{s.grpc, s.joins} {
			wg.Go(srv.GracefulStop)
		}
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(shutdownGrace):
		s.grpc.Stop()
		s.joins.Stop()
		<-done
	}
	if err != nil {
		return fmt.Errorf("xds: %w", err)
	}
	return nil
}

// Serving reports whether Run is serving.
func (s *Server) Serving() bool { return s.serving.Load() }

// Status returns what the server knows of a node's connections.
func (s *Server) Status(node string) NodeStatus { return s.cb.Status(node) }

// Synced reports whether node is connected, and whether it has
// acknowledged the current version of every resource type it follows: it
// has what was last handed over for it.
func (s *Server) Synced(node string) (connected, synced bool) { return s.cb.synced(node) }

// AckEvents returns a channel closed at the next acknowledgement or stream
// close of any node, for callers waiting until nodes are synced.
func (s *Server) AckEvents() <-chan struct{} {
	s.cb.mu.Lock()
	defer s.cb.mu.Unlock()
	return s.cb.acks
}

// Connected counts the nodes with an open stream, and those of them that
// subscribe to secrets but have not yet acknowledged their current ones,
// in one look: a CA rotation asks every second while it waits.
func (s *Server) Connected() (connected, pending int) {
	p, c := s.cb.pending()
	return c, p
}

// Stats returns the server's counters.
func (s *Server) Stats() Stats {
	now, peak := s.lim.counts()
	refused, abandoned := s.signs.counts()
	return Stats{
		CSRsRefused: refused, CSRsAbandoned: abandoned,
		Denied: s.stats.denied.Load(), Unauthenticated: s.stats.unauthenticated.Load(),
		AuthFailures: s.stats.authFailures.Load(), InvalidConfigs: s.stats.invalid.Load(),
		Joins: s.stats.joins.Load(), JoinsRefused: s.stats.joinRefused.Load(),
		ConnectionsRefused:          s.stats.connRefused.Load(),
		ConnectionsEvicted:          s.stats.connEvicted.Load(),
		ConnectionsOverAddressLimit: s.stats.connPerAddress.Load(),
		ConnectionsOverNodeLimit:    s.stats.connPerNode.Load(),
		OpenConnections:             now.all,
		OpenUnauthenticated:         now.unauth,
		PeakConnections:             peak.all,
		PeakUnauthenticated:         peak.unauth,
	}
}
