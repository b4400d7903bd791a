package registry

import (
	"context"
	"errors"
	"fmt"

	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// AssignedIdentity is an identity of an agent node as its agent needs it.
type AssignedIdentity struct {
	Name      string
	SPIFFEID  string
	Selectors []string // the local processes it is for; none: any
}

// AgentIdentities lists what the agent of node should serve: its active
// identities, sorted by name, each with its selectors. Revoked and admin
// identities are left out, as SignCSR refuses them. It fails with
// ErrNotFound for an unknown node and ErrDenied for a revoked node or one
// without an agent.
func (r *Registry) AgentIdentities(ctx context.Context, node string) ([]AssignedIdentity, error) {
	var out []AssignedIdentity
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		out = nil
		n, err := tx.Node(node)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %q %w", clip(node, identity.MaxNameLength), ErrNotFound)
		}
		if err != nil {
			return err
		}
		if n.State != store.StateActive {
			return fmt.Errorf("node %q was revoked: %w", n.Name, ErrDenied)
		}
		if !n.Agent {
			return fmt.Errorf("node %q is not an agent node: %w", n.Name, ErrDenied)
		}
		for _, name := range n.Identities { // sorted when written
			id, err := tx.Identity(name)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("identity %q: %w", name, err)
			}
			if id.State != store.StateActive || id.Admin {
				continue
			}
			out = append(out, AssignedIdentity{Name: id.Name, SPIFFEID: id.SPIFFEID, Selectors: n.Selectors[name]})
		}
		return nil
	})
	return out, err
}
