package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// AgentIdentities lists, sorted, the identities agent node node may have
// certificates for now: assigned, active and not admin (what SignCSR would
// sign), read in one transaction. A node that is not registered, not
// active or not an agent node is refused with ErrDenied.
func (r *Registry) AgentIdentities(ctx context.Context, node string) ([]string, error) {
	var out []string
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		out = nil
		n, err := tx.Node(node)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %q is not registered: %w", clip(node, identity.MaxNameLength), ErrDenied)
		} else if err != nil {
			return err
		}
		if n.State != store.StateActive {
			return fmt.Errorf("node %q was revoked: %w", n.Name, ErrDenied)
		}
		if !n.Agent {
			return fmt.Errorf("node %q is not an agent node (meshca node add --agent): meshca sends it its keys over SDS: %w", n.Name, ErrDenied)
		}
		for _, name := range n.Identities {
			id, err := tx.Identity(name)
			if errors.Is(err, store.ErrNotFound) {
				continue
			} else if err != nil {
				return err
			}
			if id.State == store.StateActive && !id.Admin {
				out = append(out, name)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.Sort(out)
	return out, nil
}
