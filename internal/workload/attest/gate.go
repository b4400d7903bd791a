package attest

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/lograte"
	"github.com/meshca/meshca/internal/peercred"
)

// Log attribute keys.
const (
	logCaller = "caller"
	logWhat   = "requested"
	logReason = "reason"
)

// GateConfig configures a Gate.
type GateConfig struct {
	// Logger receives one warning per refusal, at most LogBurst per
	// minute (a local process can be refused in a loop); nil discards.
	Logger   *slog.Logger
	LogBurst int // default lograte.DefaultBurst
	// Denied, if set, is called for every refusal, unthrottled: the
	// audit hook. It must not block.
	Denied func(c peercred.Caller, reason string)
	// Now is the log limiter's clock; nil means time.Now.
	Now func() time.Time
}

// Gate refuses, reports and logs local callers that match no assignment.
// It is safe for concurrent use.
type Gate struct {
	log    *slog.Logger
	denied func(peercred.Caller, string)
}

// NewGate returns a Gate.
func NewGate(cfg GateConfig) *Gate {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = slog.New(lograte.New(logger.Handler(), lograte.Config{Burst: cfg.LogBurst, Now: cfg.Now}))
	return &Gate{log: logger, denied: cfg.Denied}
}

// Caller returns the peer credentials of a request served with
// peercred.Credentials; a request without them (another transport) is
// refused with Unauthenticated.
func (g *Gate) Caller(ctx context.Context) (peercred.Caller, error) {
	c, ok := peercred.FromContext(ctx)
	if !ok {
		g.log.Warn("local request without peer credentials refused")
		return peercred.Caller{}, status.Error(codes.Unauthenticated, "the caller could not be identified: serve this API on a Unix socket with peer credentials")
	}
	return c, nil
}

// Deny reports a refusal of c (Denied hook, rate-limited log) and returns
// the PermissionDenied error to answer with. what names what was asked for
// (an identity, "x509-svid"); reason is safe to show the caller.
func (g *Gate) Deny(c peercred.Caller, what, reason string) error {
	if g.denied != nil {
		g.denied(c, reason)
	}
	g.log.Warn("local caller refused", logCaller, c.String(), logWhat, what, logReason, reason)
	return status.Errorf(codes.PermissionDenied, "%s: %s", what, reason)
}

// Check returns the caller of ctx if it matches selectors, and otherwise
// refuses it (Deny) with PermissionDenied.
func (g *Gate) Check(ctx context.Context, what string, selectors []string) (peercred.Caller, error) {
	c, err := g.Caller(ctx)
	if err != nil {
		return c, err
	}
	if !Match(c, selectors) {
		return c, g.Deny(c, what, "the calling process matches no selector of this identity's assignment to the node")
	}
	return c, nil
}

// StreamInterceptor refuses streams from callers without peer credentials
// before any handler runs; the handler still decides what each caller may
// have.
func (g *Gate) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if _, err := g.Caller(ss.Context()); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

// UnaryInterceptor is StreamInterceptor for unary calls.
func (g *Gate) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if _, err := g.Caller(ctx); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}
