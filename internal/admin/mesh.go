package admin

import (
	"context"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/mesh"
)

// Meshes applies, reads and rolls back the mesh model.
type Meshes interface {
	ApplyMesh(ctx context.Context, doc []byte, dryRun bool, actor string) (registry.MeshPlan, error)
	RollbackMesh(ctx context.Context, version uint64, dryRun bool, actor string) (registry.MeshPlan, error)
	MeshVersion(ctx context.Context, version uint64) (registry.MeshDocument, error)
	MeshHistory(ctx context.Context) ([]registry.MeshDocument, error)
}

func (s *Server) routeMesh() {
	s.mux.HandleFunc("POST "+api.PathMesh, s.applyMesh)
	s.mux.HandleFunc("GET "+api.PathMesh, s.getMesh)
	s.mux.HandleFunc("GET "+api.PathMeshHist, s.meshHistory)
	s.mux.HandleFunc("POST "+api.PathMeshRoll, s.rollbackMesh)
}

func (s *Server) applyMesh(w http.ResponseWriter, r *http.Request) {
	var req api.ApplyMeshRequest
	if !s.decode(w, r, &req) {
		return
	}
	wait, timeout, err := pushWait(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	plan, err := s.cfg.Meshes.ApplyMesh(r.Context(), []byte(req.Document), req.DryRun, actor(r))
	s.meshPlan(w, r, plan, err, wait, timeout)
}

func (s *Server) rollbackMesh(w http.ResponseWriter, r *http.Request) {
	var req api.RollbackMeshRequest
	if !s.decode(w, r, &req) {
		return
	}
	wait, timeout, err := pushWait(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	plan, err := s.cfg.Meshes.RollbackMesh(r.Context(), req.Version, req.DryRun, actor(r))
	s.meshPlan(w, r, plan, err, wait, timeout)
}

func (s *Server) meshPlan(w http.ResponseWriter, r *http.Request, plan registry.MeshPlan, err error, wait bool, timeout time.Duration) {
	var invalid *mesh.ValidationError
	if errors.As(err, &invalid) {
		out := api.Error{Error: "the mesh file has " + plural(len(invalid.Problems), "problem") + "; nothing was changed", Code: api.CodeInvalid}
		for _, p := range invalid.Problems {
			out.Problems = append(out.Problems, p.String())
		}
		s.reply(w, http.StatusBadRequest, out)
		return
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := api.MeshPlan{Version: plan.Version, DryRun: plan.DryRun, Unchanged: plan.Unchanged, Changes: map[string][]api.MeshChange{}}
	for node, chs := range plan.Changes {
		for _, c := range chs {
			out.Changes[node] = append(out.Changes[node], api.MeshChange{Type: c.Type, Name: c.Name, Op: c.Op})
		}
	}
	status := http.StatusCreated
	if plan.DryRun || plan.Unchanged {
		status = http.StatusOK
	}
	if wait && !plan.DryRun && !plan.Unchanged {
		out.Pushed = s.waitPushed(r, timeout)
	}
	s.reply(w, status, out)
}

func (s *Server) getMesh(w http.ResponseWriter, r *http.Request) {
	v, err := uintParam(r.URL.Query().Get("version"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	m, err := s.cfg.Meshes.MeshVersion(r.Context(), v)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusOK, api.MeshVersion{Version: m.Version, AppliedAt: m.AppliedAt, AppliedBy: m.AppliedBy, Document: string(m.Document)})
}

func (s *Server) meshHistory(w http.ResponseWriter, r *http.Request) {
	hist, err := s.cfg.Meshes.MeshHistory(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]api.MeshVersion, 0, len(hist))
	for _, m := range hist {
		out = append(out, api.MeshVersion{Version: m.Version, AppliedAt: m.AppliedAt, AppliedBy: m.AppliedBy})
	}
	s.reply(w, http.StatusOK, out)
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}
