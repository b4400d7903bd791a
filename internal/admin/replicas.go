package admin

import (
	"context"
	"net/http"

	"github.com/meshca/meshca/internal/api"
)

// Replicas lists the meshca servers sharing the store, as they registered
// themselves, ordered by ID, with Self set on this one.
type Replicas interface {
	Replicas(ctx context.Context) ([]api.Replica, error)
}

func (s *Server) routeReplicas() {
	s.mux.HandleFunc("GET "+api.PathReplicas, s.listReplicas)
}

func (s *Server) listReplicas(w http.ResponseWriter, r *http.Request) {
	out, err := s.replicas(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusOK, out)
}

// replicas is never nil, so that the answer is a JSON list.
func (s *Server) replicas(ctx context.Context) ([]api.Replica, error) {
	if s.cfg.Replicas == nil {
		return []api.Replica{}, nil
	}
	out, err := s.cfg.Replicas.Replicas(ctx)
	if out == nil {
		out = []api.Replica{}
	}
	return out, err
}
