package registry

import (
	"context"
	"fmt"
	"slices"

	"github.com/meshca/meshca/internal/store"
)

// MeshDependents lists the active nodes holding identity name whose
// configuration under the mesh in use needs it (a listener or cluster that
// presents its certificate), each with the reason. Unassigning the
// identity from such a node is refused; revoking it is not (a compromised
// key must be withdrawn at once), so the caller warns with this list.
// Empty when no mesh is in use.
func (r *Registry) MeshDependents(ctx context.Context, name string) ([]string, error) {
	if r.Mesh() == nil {
		return nil, nil
	}
	ns, err := r.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, n := range ns {
		if n.State != store.StateActive || !slices.Contains(n.Identities, name) {
			continue
		}
		without := n
		without.Identities = slices.DeleteFunc(slices.Clone(n.Identities), func(id string) bool { return id == name })
		if _, err := r.NodeMesh(without); err != nil {
			out = append(out, fmt.Sprintf("node %s (%s) needs it under the mesh in use (without it: %v)", n.Name, n.Kind, err))
		}
	}
	return out, nil
}
