package agent

import (
	"context"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/internal/workload/attest"
)

// sdsGate decides which secrets a caller of the SDS socket may have: an
// identity's only when the caller's peer credentials match the selectors
// of its assignment (none: any local process), the trust bundle always (it
// is public), and everything (a wildcard) only when it matches every
// identity's. The SDS server asks at every request, and again before it
// sends a stream anything new: a request naming anything else ends the
// stream with PermissionDenied, reported through the gate.
type sdsGate struct {
	a      *Agent
	gate   *attest.Gate
	bundle string // the bundle's secret name, spiffe://<td>
}

// check refuses names (or a wildcard) the caller of ctx may not have.
func (g sdsGate) check(ctx context.Context, names []string, wildcard bool) error {
	c, err := g.gate.Caller(ctx)
	if err != nil {
		return err
	}
	return g.checkCaller(c, names, wildcard)
}

// checkCaller refuses names (or a wildcard) c may not have.
func (g sdsGate) checkCaller(c peercred.Caller, names []string, wildcard bool) error {
	assigned, known := g.a.assignments()
	if !known {
		return status.Error(codes.Unavailable, "the agent has not yet learnt this node's identities from meshca; retry")
	}
	if wildcard {
		for _, sel := range assigned {
			if !attest.Match(c, sel) {
				return g.gate.Deny(c, "every secret", "the calling process does not match every identity's selectors: name the secrets it may have")
			}
		}
	}
	// Names beside a wildcard's "*" are checked too: a delta stream keeps
	// them.
	for _, name := range names {
		if name == "*" {
			continue
		}
		if reason := g.refusal(c, assigned, name); reason != "" {
			return g.gate.Deny(c, text.Clip(name, 200), reason)
		}
	}
	return nil
}

// mayHave reports, under the node's assignments now, whether c may have
// the secret name. A state published a moment before an assignment was
// withdrawn can still hold its secret: a wildcard answer takes each
// secret through it.
func (g sdsGate) mayHave(c peercred.Caller) func(name string) bool {
	assigned, _ := g.a.assignments()
	return func(name string) bool { return g.refusal(c, assigned, name) == "" }
}

// refusal says why c may not have the secret name, given the node's
// assignments; "" when it may.
func (g sdsGate) refusal(c peercred.Caller, assigned map[string][]string, name string) string {
	if name == g.bundle {
		return ""
	}
	ident, ok := strings.CutPrefix(name, g.bundle+"/")
	sel, held := assigned[ident]
	if !ok || !held {
		return "not an identity of this node"
	}
	if !attest.Match(c, sel) {
		return "the calling process matches no selector of this identity's assignment to the node"
	}
	return ""
}
