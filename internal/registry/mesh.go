package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/mesh"
)

// Audit action for mesh changes.
const ActionMeshApply = "mesh.apply"

// MeshPlan is what applying a mesh document does (or would do, in a dry
// run).
type MeshPlan struct {
	Version uint64                   // the stored version; 0 in a dry run
	Changes map[string][]mesh.Change // by node
	DryRun  bool
	// Unchanged: the document is the mesh in use (Version); nothing was
	// stored or pushed.
	Unchanged bool
}

// Mesh returns the mesh in use, nil before the first apply.
func (r *Registry) Mesh() *mesh.Mesh { return r.mesh.Load() }

// ApplyMesh validates a mesh document, builds every node's configuration
// from it, and only when all of that succeeds stores it as a new version
// (audited in the same transaction) and pushes it to every node. A dry run
// stops after computing what would change for each node. Every problem is
// reported at once; nothing changes on error.
func (r *Registry) ApplyMesh(ctx context.Context, doc []byte, dryRun bool, actor string) (MeshPlan, error) {
	plan, err := r.applyMesh(ctx, doc, dryRun, actor)
	if err != nil && ctx.Err() == nil && !dryRun {
		r.deny(ctx, store.Event{Action: ActionMeshApply, Actor: actor, Detail: err.Error()})
	}
	return plan, err
}

func (r *Registry) applyMesh(ctx context.Context, doc []byte, dryRun bool, actor string) (MeshPlan, error) {
	m, err := mesh.Parse(doc, r.cfg.TrustDomain)
	if err != nil {
		return MeshPlan{}, err
	}
	if err := r.checkIdentityRefs(ctx, m); err != nil {
		return MeshPlan{}, err
	}
	nodes, err := r.meshNodes(ctx)
	if err != nil {
		return MeshPlan{}, err
	}
	// Build every node once: any failure refuses the whole apply, with
	// every node's problem listed.
	plan := MeshPlan{Changes: map[string][]mesh.Change{}, DryRun: dryRun}
	cur := r.Mesh()
	var errs []error
	for _, n := range nodes {
		after, err := mesh.Build(m, n, r.cfg.TrustDomain)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		before, _ := mesh.Build(cur, n, r.cfg.TrustDomain)
		if ch := mesh.Diff(before, after); len(ch) > 0 {
			plan.Changes[n.Name] = ch
		}
	}
	if len(errs) > 0 {
		return MeshPlan{}, errors.Join(errs...)
	}
	if dryRun {
		return plan, nil
	}
	canonical, err := m.Marshal()
	if err != nil {
		return MeshPlan{}, err
	}
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		// The same mesh again is not a new version.
		if cur, err := tx.LatestMesh(); err == nil && bytes.Equal(cur.Document, canonical) {
			plan.Version, plan.Unchanged = cur.Version, true
			return nil
		} else if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		v, err := tx.AppendMesh(canonical, actor)
		if err != nil {
			return err
		}
		plan.Version = v.Version
		_, err = tx.Append(store.Event{Action: ActionMeshApply, Actor: actor,
			Detail: fmt.Sprintf("version=%d nodes_changed=%d", v.Version, len(plan.Changes))})
		return err
	})
	if err != nil {
		return MeshPlan{}, fmt.Errorf("store mesh: %w", err)
	}
	if plan.Unchanged {
		r.log.Info("mesh unchanged", "version", plan.Version, "actor", actor)
		return plan, nil
	}
	r.mesh.Store(m)
	r.log.Info("mesh applied", "version", plan.Version, "nodes_changed", len(plan.Changes), "actor", actor)
	return plan, nil
}

// checkIdentityRefs refuses a mesh that names an identity that does not
// exist or is revoked: it would be accepted, and every handshake with that
// identity would fail. Each reference is reported by its field path.
func (r *Registry) checkIdentityRefs(ctx context.Context, m *mesh.Mesh) error {
	refs := m.IdentityRefs()
	if len(refs) == 0 {
		return nil
	}
	var problems []mesh.Problem
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		for _, ref := range refs {
			id, err := tx.Identity(ref.Name)
			switch {
			case errors.Is(err, store.ErrNotFound):
				problems = append(problems, mesh.Problem{Path: ref.Path,
					Message: fmt.Sprintf("identity %q does not exist: create it first (meshca identity add %s)", ref.Name, ref.Name)})
			case err != nil:
				return err
			case id.State == store.StateRevoked:
				problems = append(problems, mesh.Problem{Path: ref.Path,
					Message: fmt.Sprintf("identity %q is revoked: name another identity or add a new one", ref.Name)})
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check mesh identities: %w", err)
	}
	if len(problems) > 0 {
		return &mesh.ValidationError{Problems: problems}
	}
	return nil
}

// meshNodes lists the active nodes as the mesh builder sees them.
func (r *Registry) meshNodes(ctx context.Context) ([]mesh.Node, error) {
	ns, err := r.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var out []mesh.Node
	for _, n := range ns {
		if n.State == store.StateActive {
			out = append(out, mesh.Node{Name: n.Name, Kind: n.Kind, Identities: n.Identities})
		}
	}
	return out, nil
}

// MeshVersion returns a stored mesh version; 0 means the latest.
func (r *Registry) MeshVersion(ctx context.Context, version uint64) (MeshDocument, error) {
	var m store.Mesh
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		if version == 0 {
			m, err = tx.LatestMesh()
		} else {
			m, err = tx.Mesh(version)
		}
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		if version == 0 {
			return MeshDocument{}, fmt.Errorf("no mesh has been applied yet (meshca mesh apply -f FILE): %w", ErrNotFound)
		}
		return MeshDocument{}, fmt.Errorf("mesh version %d %w", version, ErrNotFound)
	}
	if err != nil {
		return MeshDocument{}, err
	}
	return meshView(m), nil
}

// MeshHistory lists every stored mesh version, oldest first.
func (r *Registry) MeshHistory(ctx context.Context) ([]MeshDocument, error) {
	var hist []store.Mesh
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		hist, err = tx.MeshHistory()
		return err
	})
	if err != nil {
		return nil, err
	}
	return views(hist, meshView), nil
}

// RollbackMesh applies a stored version again, as a new version.
func (r *Registry) RollbackMesh(ctx context.Context, version uint64, dryRun bool, actor string) (MeshPlan, error) {
	old, err := r.MeshVersion(ctx, version)
	if err != nil {
		return MeshPlan{}, err
	}
	return r.ApplyMesh(ctx, old.Document, dryRun, fmt.Sprintf("%s (rollback to %d)", actor, version))
}

// loadMesh parses the latest stored mesh at start.
func (r *Registry) loadMesh(ctx context.Context) error {
	m, err := r.MeshVersion(ctx, 0)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	parsed, err := mesh.Parse(m.Document, r.cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("stored mesh version %d no longer parses: %w", m.Version, err)
	}
	r.mesh.Store(parsed)
	return nil
}

// NodeMesh builds a node's listeners, routes, clusters and endpoints from
// the mesh in use.
func (r *Registry) NodeMesh(n Node) (mesh.Resources, error) {
	return mesh.Build(r.Mesh(), mesh.Node{Name: n.Name, Kind: n.Kind, Identities: n.Identities, Agent: n.Agent}, r.cfg.TrustDomain)
}
