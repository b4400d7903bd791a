// Package admin serves meshca's admin API: JSON over HTTP for the CLI and
// for automation. It is an edge: it decodes and bounds requests, calls the
// registry and the authority through small interfaces, and maps errors to
// HTTP status codes with messages safe for the client. It never sees a
// private key.
package admin

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/telemetry"
	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/rotation"
)

// Identities registers and reads identities.
type Identities interface {
	AddIdentity(ctx context.Context, req registry.AddIdentity, actor string) (registry.Status, error)
	Identity(ctx context.Context, name string) (registry.Status, error)
	Identities(ctx context.Context) ([]registry.Status, error)
	// HolderCerts are the agent nodes' own certificates for an identity.
	HolderCerts(ctx context.Context, name string) ([]registry.HolderCert, error)
}

// CSRSigner issues a certificate for an identity to the key of a CSR.
type CSRSigner interface {
	IssueFromCSR(ctx context.Context, name string, csrDER []byte, actor string) (registry.Cert, error)
}

// DenialRecorder audits a refused request.
type DenialRecorder interface {
	RecordDenial(ctx context.Context, action, node, detail string)
}

// Authority exposes the CA in use, imports an operator's CA and rotates
// the CA.
type Authority interface {
	CA() *ca.CA
	// ServerIssuer signs meshca's server certificate: its SHA-256 is the
	// pin a node bootstraps with.
	ServerIssuer() *x509.Certificate
	// IssuersPEM are the CAs that may sign meshca's server certificate:
	// the --ca-file of meshca bootstrap.
	IssuersPEM(ctx context.Context) []byte
	ImportCA(ctx context.Context, certPEM, keyPEM []byte, actor string) error
	StartRotation(ctx context.Context, root bool, actor string) error
	AbortRotation(ctx context.Context, actor string) error
	EmergencyRotation(ctx context.Context, root bool, actor string) (authority.RotationDone, error)
	RotationStatus() *authority.Rotation
	LastRotation() *authority.RotationDone
}

// Leadership tells which replica leads; ok is false when none does.
type Leadership interface {
	Leader(ctx context.Context) (l api.Leader, ok bool, err error)
}

// AuditLog reads audit records after a sequence number, oldest first, and
// tells the newest sequence number.
type AuditLog interface {
	Audit(ctx context.Context, after uint64, limit int) ([]registry.Event, error)
	LastAuditSeq(ctx context.Context) (uint64, error)
}

// Limits on requests.
const (
	maxBody         = 1 << 20
	shutdownTimeout = 10 * time.Second
)

// Config configures a Server.
type Config struct {
	Identities  Identities  // required
	CSRSigner   CSRSigner   // required
	Nodes       Nodes       // required
	Reissuer    Reissuer    // required
	Revoker     Revoker     // required
	CRLs        CRLs        // required
	Meshes      Meshes      // required
	Connections Connections // required
	// Pushes, when set, lets writes wait until the nodes have the change
	// (wait=pushed).
	Pushes PushWaiter
	// XDSAddress is where nodes reach meshca, shown with join tokens.
	XDSAddress string
	// Replicas, when set, lists the replicas (GET /v1/replicas, the
	// status page); without it the list is empty.
	Replicas Replicas
	// Metrics serves /metrics; Ready answers /readyz (nil error: ready).
	Metrics http.Handler
	Ready   func(ctx context.Context) error
	// Authorizer re-checks an mTLS caller on every request (see MTLS).
	Authorizer Authorizer
	// Denials, when set, audits requests refused here, before they reach
	// the registry (malformed or oversized bodies); the registry audits
	// its own refusals.
	Denials DenialRecorder
	// Logs holds the access logs proxies sent (GET /v1/logs).
	Logs *telemetry.Store
	// Renewal is the renewal policy, to show when each certificate renews.
	Renewal   rotation.Policy
	Authority Authority // required
	Audit     AuditLog  // required
	// Leadership, when set, names the replica that leads (GET /v1/ca
	// and the status page).
	Leadership  Leadership
	TrustDomain string
	Logger      *slog.Logger
	Clock       clock.Clock // default clock.Real
}

// Server is the admin API server.
type Server struct {
	cfg  Config
	log  *slog.Logger
	mux  *http.ServeMux
	mtls *connLimit // the connections of the TLS listeners
}

// New validates cfg and builds the routes.
func New(cfg Config) (*Server, error) {
	if cfg.Identities == nil || cfg.CSRSigner == nil || cfg.Authority == nil || cfg.Audit == nil ||
		cfg.Nodes == nil || cfg.Reissuer == nil || cfg.Revoker == nil || cfg.CRLs == nil || cfg.Meshes == nil || cfg.Connections == nil {
		return nil, errors.New("admin: Identities, CSRSigner, Nodes, Reissuer, Revoker, CRLs, Meshes, Connections, Authority and Audit are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	s := &Server{cfg: cfg, log: cfg.Logger, mux: http.NewServeMux(), mtls: newConnLimit(MaxMTLSConnections)}
	s.mux.HandleFunc("POST "+api.PathIdentities, s.addIdentity)
	s.mux.HandleFunc("GET "+api.PathIdentities, s.listIdentities)
	s.mux.HandleFunc("GET "+api.PathIdentities+"/{name...}", s.getIdentity)
	s.mux.HandleFunc("GET "+api.PathCerts+"/{name...}", s.getCert)
	s.mux.HandleFunc("POST "+api.PathCerts+"/{name...}", s.issueCert)
	s.mux.HandleFunc("GET "+api.PathCA, s.getCA)
	s.mux.HandleFunc("GET "+api.PathCABundle, s.getBundle)
	s.mux.HandleFunc("GET "+api.PathCAPin, s.getPin)
	s.mux.HandleFunc("POST "+api.PathCAImport, s.importCA)
	s.mux.HandleFunc("POST "+api.PathCARotate, s.rotateCA)
	s.mux.HandleFunc("GET "+api.PathAudit, s.listAudit)
	s.routeNodes()
	s.routeMesh()
	s.routeStatus()
	s.routeReplicas()
	if cfg.Metrics != nil {
		s.mux.Handle("GET /metrics", cfg.Metrics)
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.mux.HandleFunc("GET "+api.PathLogs, s.logs)
	return s, nil
}

// Handler returns the API's handler (without TLS).
func (s *Server) Handler() http.Handler { return s.mux }

// MaxMTLSConnections bounds the connections the mTLS admin listener, which
// anyone who can reach it may connect to, holds at once: beyond it new
// connections wait in the kernel's backlog, holding no descriptor of
// meshca's, until one closes (a connection that never finishes its
// handshake is closed after ReadHeaderTimeout).
const MaxMTLSConnections = 64

// MTLSConnections returns the connections the TLS listeners hold now and
// the most they held at once since the server was made: never more than
// MaxMTLSConnections per listener.
func (s *Server) MTLSConnections() (open, peak int) { return s.mtls.counts() }

// Run serves on ln until ctx is done, then stops accepting and lets
// in-flight requests finish for up to 10 seconds. With tlsCfg (see MTLS) it
// serves HTTPS; without, plain HTTP, which is only for loopback.
func (s *Server) Run(ctx context.Context, ln net.Listener, tlsCfg *tls.Config) error {
	handler := s.loopbackOnly(s.mux)
	if tlsCfg != nil {
		handler = s.adminOnly(s.mux)
	}
	srv := &http.Server{
		Handler:           handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          s.connErrorLog(),
		BaseContext:       func(net.Listener) context.Context { return context.WithoutCancel(ctx) },
	}
	if tlsCfg != nil {
		ln = tls.NewListener(s.mtls.listen(ln), tlsCfg)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("admin: shutdown: %w", err)
	}
	return nil
}

// logs returns access-log entries: ?node=N&after=SEQ (per node) &limit=K.
func (s *Server) logs(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := uintParam(q.Get("after"))
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: after: %v", errInvalid, err))
		return
	}
	limit, err := uintParam(q.Get("limit"))
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: limit: %v", errInvalid, err))
		return
	}
	out := []api.LogEntry{}
	if s.cfg.Logs != nil {
		for _, e := range s.cfg.Logs.Logs(q.Get("node"), after, int(min(limit, telemetry.RingSize))) {
			out = append(out, api.LogEntry{Seq: e.Seq, Node: e.Node, Time: e.Time, Method: e.Method, Authority: e.Authority, Path: e.Path,
				Status: e.Status, Duration: e.Duration, Upstream: e.Upstream, Peer: e.Peer, Protocol: e.Protocol})
		}
	}
	s.reply(w, http.StatusOK, out)
}

// readyz is 200 when meshca can issue and serve, 503 with the reason
// otherwise.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if s.cfg.Ready != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if err := s.cfg.Ready(ctx); err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte("not ready: " + err.Error() + "\n"))
			return
		}
	}
	_, _ = w.Write([]byte("ready\n"))
}

func (s *Server) addIdentity(w http.ResponseWriter, r *http.Request) {
	var req api.AddIdentityRequest
	if !s.decode(w, r, &req) {
		return
	}
	var ttl time.Duration
	if req.TTL != "" {
		var err error
		if ttl, err = time.ParseDuration(req.TTL); err != nil {
			s.fail(w, r, fmt.Errorf("%w: ttl %q is not a duration (for example 30m, 1h, 24h)", errInvalid, clip(req.TTL)))
			return
		}
		// A given TTL is checked as given: 0 must not fall back to the
		// default, which is what an absent TTL means (the registry checks
		// the other bounds and audits the refusal).
		if ttl <= 0 {
			s.fail(w, r, fmt.Errorf("ttl: %w (leave ttl out for the server's default)", authority.CheckLeafTTL(ttl)))
			return
		}
	}
	st, err := s.cfg.Identities.AddIdentity(r.Context(), registry.AddIdentity{
		Name: req.Name, DNSNames: req.DNSNames, TTL: ttl, Admin: req.Admin,
	}, actor(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.reply(w, http.StatusCreated, s.identityJSON(st))
}

func (s *Server) listIdentities(w http.ResponseWriter, r *http.Request) {
	list, err := s.cfg.Identities.Identities(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]api.Identity, 0, len(list))
	for _, st := range list {
		out = append(out, s.identityJSON(st))
	}
	s.reply(w, http.StatusOK, out)
}

func (s *Server) getIdentity(w http.ResponseWriter, r *http.Request) {
	st, err := s.cfg.Identities.Identity(r.Context(), r.PathValue("name"))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	hs, err := s.cfg.Identities.HolderCerts(r.Context(), st.Identity.Name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := s.identityJSON(st)
	for _, h := range hs {
		out.Holders = append(out.Holders, api.HolderCert{Node: h.Node, Cert: api.Cert{Serial: h.Cert.Serial, IssuerSerial: h.Cert.IssuerSerial,
			NotBefore: h.Cert.NotBefore, NotAfter: h.Cert.NotAfter, State: h.State}})
	}
	s.reply(w, http.StatusOK, out)
}

func (s *Server) getCert(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	st, err := s.cfg.Identities.Identity(r.Context(), name)
	if err != nil {
		s.fail(w, r, err)
		return
	}
	if st.Cert == nil {
		s.fail(w, r, fmt.Errorf("identity %q holds no certificate: %w", clip(name), registry.ErrNotFound))
		return
	}
	c := certJSON(st)
	c.ChainPEM = string(registry.ChainPEM(*st.Cert))
	s.reply(w, http.StatusOK, c)
}

func (s *Server) issueCert(w http.ResponseWriter, r *http.Request) {
	var req api.IssueCertRequest
	if !s.decode(w, r, &req) {
		return
	}
	block, rest := pem.Decode([]byte(req.CSRPEM))
	if block == nil || block.Type != "CERTIFICATE REQUEST" || len(bytes.TrimSpace(rest)) != 0 {
		s.fail(w, r, fmt.Errorf("%w: csr_pem must hold exactly one PEM CERTIFICATE REQUEST block", errInvalid))
		return
	}
	name := r.PathValue("name")
	c, err := s.cfg.CSRSigner.IssueFromCSR(r.Context(), name, block.Bytes, actor(r))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	st := registry.Status{Cert: &c, CertState: "valid"}
	out := certJSON(st)
	out.ChainPEM = string(registry.ChainPEM(c))
	s.reply(w, http.StatusCreated, out)
}

func (s *Server) getCA(w http.ResponseWriter, r *http.Request) {
	c := s.cfg.Authority.CA()
	out := api.CA{TrustDomain: s.cfg.TrustDomain, Issuer: caCertJSON(c.Issuer())}
	for _, root := range c.Roots() {
		out.Roots = append(out.Roots, caCertJSON(root))
	}
	out.Rotation = rotationJSON(s.cfg.Authority.RotationStatus())
	if d := s.cfg.Authority.LastRotation(); d != nil {
		out.LastRotation = &api.CARotationDone{Kind: d.Kind, Emergency: d.Emergency, Aborted: d.Aborted,
			StartedAt: d.StartedAt, FinishedAt: d.FinishedAt, Reissued: d.Reissued, Revoked: d.Revoked}
	}
	out.Leader = s.leader(r.Context())
	s.reply(w, http.StatusOK, out)
}

// leader returns the replica that leads, nil when none does or it cannot
// be read (the rest of the answer does not depend on it).
func (s *Server) leader(ctx context.Context) *api.Leader {
	if s.cfg.Leadership == nil {
		return nil
	}
	l, ok, err := s.cfg.Leadership.Leader(ctx)
	if err != nil {
		s.log.Warn("leader not read", "err", err)
		return nil
	}
	if !ok {
		return nil
	}
	return &l
}

// rotationJSON is the API form of a rotation in progress; nil for none.
func rotationJSON(rot *authority.Rotation) *api.CARotation {
	if rot == nil {
		return nil
	}
	out := &api.CARotation{Kind: rot.Kind, Phase: rot.Phase, Emergency: rot.Emergency, StartedAt: rot.StartedAt, PhaseSince: rot.PhaseSince,
		WaitingFor: rot.WaitingFor, Leaves: rot.Leaves, Reissued: rot.Reissued, ReissueFailed: rot.ReissueFailed,
		NodesConnected: rot.NodesConnected, NodesAcked: rot.NodesAcked, OldNodeCerts: rot.OldNodeCerts, OldAgentCerts: rot.OldAgentCerts, OwnWorkDone: rot.OwnWorkDone}
	if !rot.RetireAfter.IsZero() {
		t := rot.RetireAfter
		out.RetireAfter = &t
	}
	return out
}

func (s *Server) rotateCA(w http.ResponseWriter, r *http.Request) {
	var req api.RotateCARequest
	if !s.decode(w, r, &req) {
		return
	}
	var err error
	switch {
	case req.Abort && (req.Root || req.Emergency):
		err = fmt.Errorf("%w: abort takes no other option: it withdraws the rotation in progress", errInvalid)
	case req.Abort:
		err = s.cfg.Authority.AbortRotation(r.Context(), actor(r))
	case req.Emergency:
		_, err = s.cfg.Authority.EmergencyRotation(r.Context(), req.Root, actor(r))
	default:
		err = s.cfg.Authority.StartRotation(r.Context(), req.Root, actor(r))
	}
	if err != nil {
		s.fail(w, r, err)
		return
	}
	s.getCA(w, r)
}

func (s *Server) getBundle(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(s.cfg.Authority.CA().BundlePEM())
}

// getPin serves the CAs a node pins meshca by when it bootstraps.
func (s *Server) getPin(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(s.cfg.Authority.IssuersPEM(r.Context()))
}

func (s *Server) importCA(w http.ResponseWriter, r *http.Request) {
	var req api.ImportCARequest
	if !s.decode(w, r, &req) {
		return
	}
	if err := s.cfg.Authority.ImportCA(r.Context(), []byte(req.CertPEM), []byte(req.KeyPEM), actor(r)); err != nil {
		s.fail(w, r, err)
		return
	}
	s.getCA(w, r)
}

func (s *Server) listAudit(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	after, err := uintParam(q.Get("after"))
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: after: %v", errInvalid, err))
		return
	}
	limit, err := uintParam(q.Get("limit"))
	if err != nil {
		s.fail(w, r, fmt.Errorf("%w: limit: %v", errInvalid, err))
		return
	}
	// ?last=N: the newest N records.
	if last, err := uintParam(q.Get("last")); err != nil {
		s.fail(w, r, fmt.Errorf("%w: last: %v", errInvalid, err))
		return
	} else if last > 0 {
		newest, err := s.cfg.Audit.LastAuditSeq(r.Context())
		if err != nil {
			s.fail(w, r, err)
			return
		}
		after, limit = 0, last
		if newest > last {
			after = newest - last
		}
	}
	evs, err := s.cfg.Audit.Audit(r.Context(), after, int(min(limit, 100000)))
	if err != nil {
		s.fail(w, r, err)
		return
	}
	out := make([]api.AuditEvent, 0, len(evs))
	for _, e := range evs {
		out = append(out, api.AuditEvent(e))
	}
	s.reply(w, http.StatusOK, out)
}

func uintParam(s string) (uint64, error) {
	if s == "" {
		return 0, nil
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%q is not a non-negative integer", clip(s))
	}
	return v, nil
}

var (
	errInvalid  = errors.New("invalid request")
	errTooLarge = errors.New("request body larger than 1 MiB")
)

func (s *Server) decode(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			s.fail(w, r, errTooLarge)
		} else {
			s.fail(w, r, fmt.Errorf("%w: body is not the expected JSON: %v", errInvalid, err))
		}
		return false
	}
	if dec.More() {
		s.fail(w, r, fmt.Errorf("%w: trailing data after the JSON body", errInvalid))
		return false
	}
	return true
}

// fail maps an error to a status and a message safe for the client. Errors
// the client cannot act on are logged and answered with a generic message.
func (s *Server) fail(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := http.StatusInternalServerError, api.CodeInternal, "internal error; the server log has the details"
	switch {
	case errors.Is(err, errTooLarge):
		status, code, msg = http.StatusRequestEntityTooLarge, api.CodeTooLarge, err.Error()
	case errors.Is(err, errInvalid), errors.Is(err, registry.ErrInvalid), errors.Is(err, authority.ErrInvalid), errors.Is(err, identity.ErrInvalidName), errors.Is(err, identity.ErrInvalidDNSName),
		errors.Is(err, identity.ErrForeignTrustDomain), errors.Is(err, ca.ErrTTL), errors.Is(err, ca.ErrInvalidRequest),
		errors.Is(err, ca.ErrImport), errors.Is(err, ca.ErrKeyMismatch), errors.Is(err, ca.ErrNotCA):
		status, code, msg = http.StatusBadRequest, api.CodeInvalid, err.Error()
	case errors.Is(err, registry.ErrDenied):
		status, code, msg = http.StatusForbidden, api.CodeDenied, err.Error()
	case errors.Is(err, registry.ErrNotFound), errors.Is(err, authority.ErrNoRotation):
		status, code, msg = http.StatusNotFound, api.CodeNotFound, err.Error()
	case errors.Is(err, registry.ErrExists), errors.Is(err, authority.ErrCAInUse), errors.Is(err, authority.ErrRotating), errors.Is(err, ca.ErrConfig):
		status, code, msg = http.StatusConflict, api.CodeConflict, err.Error()
	case errors.Is(err, ca.ErrLint):
		status, code, msg = http.StatusInternalServerError, api.CodeLint, "the certificate failed the lint gate and was not issued (meshca audit list shows which lints)"
	case errors.Is(err, ca.ErrIssuerExpired):
		status, code, msg = http.StatusServiceUnavailable, api.CodeExpired, "the issuing CA has expired; rotate or import a CA"
	case errors.Is(err, registry.ErrUnavailable):
		status, code, msg = http.StatusServiceUnavailable, api.CodeUnavailable, err.Error()
	}
	if (errors.Is(err, errInvalid) || errors.Is(err, errTooLarge)) && s.cfg.Denials != nil && r.Method != http.MethodGet {
		s.cfg.Denials.RecordDenial(r.Context(), "admin.request", "", r.Method+" "+clip(r.URL.Path)+": "+msg)
	}
	if status >= 500 {
		s.log.Error("admin request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	} else {
		s.log.Debug("admin request refused", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	s.reply(w, status, api.Error{Error: msg, Code: code})
}

func (s *Server) reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		s.log.Debug("admin reply not written", "err", err)
	}
}

// actor names the caller in audit records: the admin identity's SPIFFE ID
// under mTLS, else "local" and the loopback address.
func actor(r *http.Request) string {
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		if uris := r.TLS.PeerCertificates[0].URIs; len(uris) == 1 {
			return uris[0].String()
		}
	}
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	return "local:" + host
}

// identityJSON describes an identity; its certificate carries the time the
// renewal loop replaces it, unless the identity is revoked.
func (s *Server) identityJSON(st registry.Status) api.Identity {
	id := st.Identity
	out := api.Identity{
		Name: id.Name, SPIFFEID: id.SPIFFEID, DNSNames: id.DNSNames, TTL: id.TTL.String(),
		Admin: id.Admin, State: id.State, CreatedAt: id.CreatedAt,
	}
	if st.Cert != nil {
		c := certJSON(st)
		if id.State != registry.StateRevoked && st.CertState != "revoked" {
			at := s.cfg.Renewal.RenewAt(st.Cert.NotBefore, st.Cert.NotAfter, st.Cert.Serial)
			c.RenewAt = &at
		}
		out.Cert = &c
	}
	return out
}

func certJSON(st registry.Status) api.Cert {
	c := st.Cert
	return api.Cert{Serial: c.Serial, IssuerSerial: c.IssuerSerial, NotBefore: c.NotBefore, NotAfter: c.NotAfter, State: st.CertState}
}

func caCertJSON(c *x509.Certificate) api.CACert {
	sum := sha256.Sum256(c.Raw)
	return api.CACert{
		Subject: c.Subject.String(), Serial: fmt.Sprintf("%x", c.SerialNumber),
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, SHA256: hex.EncodeToString(sum[:]),
	}
}

func clip(s string) string { return text.Clip(s, 80) }
