package nodecmd

import (
	"testing"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/authority"
)

// TestNodeRenewalIsMeshcas: the node certificate is renewed by
// agent.DefaultPolicy, since this package may not import the authority
// that states meshca's renewal rule; the two must stay one rule.
func TestNodeRenewalIsMeshcas(t *testing.T) {
	if got, want := agent.DefaultPolicy, authority.Default().Renewal(); got != want {
		t.Fatalf("agent.DefaultPolicy = %+v, meshca renews leaves at %+v", got, want)
	}
}
