package admin

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
)

// Nodes registers nodes and changes their identities.
type Nodes interface {
	AddNode(ctx context.Context, req registry.AddNode, actor string) (registry.Node, registry.JoinToken, error)
	NewJoinToken(ctx context.Context, name, actor string) (registry.JoinToken, error)
	Node(ctx context.Context, name string) (registry.Node, error)
	Nodes(ctx context.Context) ([]registry.Node, error)
	AssignIdentity(ctx context.Context, a registry.Assignment, actor string) (registry.Node, error)
	Unassign(ctx context.Context, node, identity, actor string) (registry.Node, error)
}

// Reissuer issues a new current certificate for an identity and pushes it.
type Reissuer interface {
	ReissueIdentity(ctx context.Context, name, actor string) (registry.Status, error)
	ReissueAll(ctx context.Context, actor string, progress func(registry.ReissueProgress)) (registry.ReissueProgress, error)
}

// Revoker revokes identities and nodes and serves the CRL.
type Revoker interface {
	RevokeIdentity(ctx context.Context, name, reason, actor string) (registry.Revoked, error)
	RevokeNode(ctx context.Context, name, reason, actor string) (registry.Revoked, error)
	// MeshDependents lists the nodes whose configuration needs the
	// identity, with the reason.
	MeshDependents(ctx context.Context, name string) ([]string, error)
}

// CRLs stores and serves the CRL the nodes verify peers with.
type CRLs interface {
	// PublishCRL returns once the CRL in the store lists every revocation
	// committed before the call; a failure is logged and retried there.
	PublishCRL(ctx context.Context) error
	// CRL is the CRL in use as PEM; nil when nothing is revoked.
	CRL() []byte
}

// Connections reports what the xDS server knows of a node.
type Connections interface {
	NodeConnection(node string) api.NodeConnection
}

func (s *Server) routeNodes() {
	s.mux.HandleFunc("POST "+api.PathNodes, s.addNode)
	s.mux.HandleFunc("GET "+api.PathNodes, s.listNodes)
	s.mux.HandleFunc("GET "+api.PathNodes+"/{name}", s.getNode)
	s.mux.HandleFunc("POST "+api.PathNodes+"/{name}/token", s.nodeToken)
	s.mux.HandleFunc("POST "+api.PathNodes+"/{name}/identities", s.assign)
	s.mux.HandleFunc("DELETE "+api.PathNodes+"/{name}/identities/{identity...}", s.unassign)
	s.mux.HandleFunc("POST "+api.PathReissue, s.reissueAll)
	s.mux.HandleFunc("POST "+api.PathReissue+"/{name...}", s.reissue)
	s.mux.HandleFunc("POST "+api.PathRevoke+"/{name...}", s.revokeIdentity)
	s.mux.HandleFunc("POST "+api.PathNodes+"/{name}/revoke", s.revokeNode)
	s.mux.HandleFunc("GET "+api.PathCRL, s.getCRL)
}

func (s *Server) revokeIdentity(w http.ResponseWriter, r *http.Request) {
	var req api.RevokeRequest
	if !s.decode(w, r, &req) {
		return
	}
	wait, timeout, err := pushWait(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	name := r.PathValue("name")
	// Read before the revocation, which must not wait on or fail for it.
	deps, derr := s.cfg.Revoker.MeshDependents(r.Context(), name)
	if derr != nil {
		s.log.Error("cannot tell which nodes need a revoked identity", "identity", name, "err", derr)
	}
	res, err := s.cfg.Revoker.RevokeIdentity(r.Context(), name, req.Reason, actor(r))
	s.revoked(w, r, res, deps, err, wait, timeout)
}

func (s *Server) revokeNode(w http.ResponseWriter, r *http.Request) {
	var req api.RevokeRequest
	if !s.decode(w, r, &req) {
		return
	}
	wait, timeout, err := pushWait(r)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	res, err := s.cfg.Revoker.RevokeNode(r.Context(), r.PathValue("name"), req.Reason, actor(r))
	s.revoked(w, r, res, nil, err, wait, timeout)
}

// revoked answers a revocation; warnings name what it leaves without a
// certificate.
func (s *Server) revoked(w http.ResponseWriter, r *http.Request, res registry.Revoked, warnings []string, err error, wait bool, timeout time.Duration) {
	if err != nil {
		s.fail(w, r, err)
		return
	}
	serials := res.Serials
	if serials == nil {
		serials = []string{}
	}
	out := api.Revoked{Serials: serials, Nodes: len(res.Nodes), Warnings: warnings}
	// The revocation is committed; its CRL is signed from the store's
	// change feed as well, but the answer (and wait=pushed) waits until it
	// is stored, so that /v1/crl and the nodes have it.
	_ = s.cfg.CRLs.PublishCRL(r.Context()) // a failure is logged there, and retried
	if wait {
		out.Pushed = s.waitPushed(r, timeout)
	}
	s.reply(w, http.StatusOK, out)
}

// getCRL serves the current CRL as PEM; with nothing revoked there is no
// CRL and the answer is 204.
func (s *Server) getCRL(w http.ResponseWriter, r *http.Request) {
	crl := s.cfg.CRLs.CRL()
	if len(crl) == 0 {
		w.WriteHeader(http.StatusNoContent)
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(crl)
}

func (s *Server) addNode(w http.ResponseWriter, r *http.Request) {
	var req api.AddNodeRequest
	if !s.decode(w, r, &req) {
		return
	}
	n, tok, err := s.cfg.Nodes.AddNode(r.Context(), registry.AddNode{Name: req.Name, Kind: req.Kind, Identities: req.Identities, Agent: req.Agent, Selectors: req.Selectors}, actor(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusCreated, s.joinToken(n, tok))
}

func (s *Server) nodeToken(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	tok, err := s.cfg.Nodes.NewJoinToken(r.Context(), name, actor(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	n, err := s.cfg.Nodes.Node(r.Context(), name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusOK, s.joinToken(n, tok))
}

func (s *Server) joinToken(n registry.Node, tok registry.JoinToken) api.JoinToken {
	out := api.JoinToken{Node: s.nodeJSON(n), Token: tok.Token, Expires: tok.Expires, XDSAddress: s.cfg.XDSAddress}
	// The pin is the CA that signs meshca's server certificate, which only
	// meshca holds: a root may be shared with other CAs of an organisation.
	if issuer := s.cfg.Authority.ServerIssuer(); issuer != nil {
		sum := sha256.Sum256(issuer.Raw)
		out.CASHA256 = hex.EncodeToString(sum[:])
	}
	return out
}

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) {
	ns, err := s.cfg.Nodes.Nodes(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]api.Node, 0, len(ns))
	for _, n := range ns {
		out = append(out, s.nodeJSON(n))
	}
	s.reply(w, http.StatusOK, out)
}

func (s *Server) getNode(w http.ResponseWriter, r *http.Request) {
	n, err := s.cfg.Nodes.Node(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusOK, s.nodeJSON(n))
}

func (s *Server) assign(w http.ResponseWriter, r *http.Request) {
	var req api.AssignRequest
	if !s.decode(w, r, &req) {
		return
	}
	n, err := s.cfg.Nodes.AssignIdentity(r.Context(), registry.Assignment{Node: r.PathValue("name"), Identity: req.Identity, Selectors: req.Selectors}, actor(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusOK, s.nodeJSON(n))
}

func (s *Server) unassign(w http.ResponseWriter, r *http.Request) {
	n, err := s.cfg.Nodes.Unassign(r.Context(), r.PathValue("name"), r.PathValue("identity"), actor(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusOK, s.nodeJSON(n))
}

func (s *Server) reissue(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Reissuer.ReissueIdentity(r.Context(), r.PathValue("name"), actor(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusOK, s.identityJSON(st))
}

// reissueAll re-keys every identity, streaming progress as JSON lines. The
// status line is sent with the first progress line, so a run refused at
// once gets a proper error; each write then has its own deadline, as the
// run may outlast the server's write timeout.
func (s *Server) reissueAll(w http.ResponseWriter, r *http.Request) {
	var req api.ReissueAllRequest
	if !s.decode(w, r, &req) {
		return
	}
	if !req.All {
		s.fail(w, r, fmt.Errorf(`%w: send {"all": true} to re-key every identity, or POST %s/NAME for one`, errInvalid, api.PathReissue))
		return
	}
	rc := http.NewResponseController(w)
	start := time.Now()
	line := func(p registry.ReissueProgress) api.ReissueProgress {
		return api.ReissueProgress{Total: p.Total, Reissued: p.Reissued, Failed: p.Failed, ElapsedMS: time.Since(start).Milliseconds()}
	}
	enc := json.NewEncoder(w)
	started := false
	send := func(p api.ReissueProgress) {
		if !started {
			w.Header().Set("Content-Type", "application/x-ndjson")
			w.Header().Set("Cache-Control", "no-store")
			w.WriteHeader(http.StatusOK)
			started = true
		}
		_ = rc.SetWriteDeadline(time.Now().Add(reissueWriteTimeout))
		_ = enc.Encode(p)
		_ = rc.Flush()
	}
	var last atomic.Pointer[registry.ReissueProgress]
	type result struct {
		sum registry.ReissueProgress
		err error
	}
	done := make(chan result, 1)
	go func() {
		sum, err := s.cfg.Reissuer.ReissueAll(r.Context(), actor(r), func(p registry.ReissueProgress) { last.Store(&p) })
		done <- result{sum, err}
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case res := <-done:
			if !started && res.err != nil && res.sum.Total == 0 {
				s.fail(w, r, res.err)
				return
			}
			out := line(res.sum)
			out.Finished, out.Errors = true, res.sum.Errors
			if res.err != nil {
				out.Error = res.err.Error()
			}
			send(out)
			return
		case <-tick.C:
			if p := last.Load(); p != nil {
				send(line(*p))
			}
		}
	}
}

// reissueWriteTimeout bounds each progress write of reissueAll.
const reissueWriteTimeout = 30 * time.Second

func (s *Server) nodeJSON(n registry.Node) api.Node {
	ids := n.Identities
	if ids == nil {
		ids = []string{}
	}
	return api.Node{
		Name: n.Name, Kind: n.Kind, Identities: ids, State: n.State, Agent: n.Agent, Selectors: n.Selectors, Joined: !n.JoinedAt.IsZero(),
		CreatedAt: n.CreatedAt, Connection: s.cfg.Connections.NodeConnection(n.Name),
	}
}
