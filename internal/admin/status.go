package admin

import (
	"bytes"
	"context"
	"embed"
	"html/template"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/registry"
)

// The status page is server-rendered from the same interfaces as the JSON
// API; its one script (live countdowns) is embedded and served from
// /static/status.js so the CSP needs no 'unsafe-inline' for scripts. It
// shows names, serials, SPIFFE IDs, fingerprints, times and states, never
// keys or PEM.

//go:embed page/*
var pageFS embed.FS

var statusTmpl = template.Must(template.New("status.html").Funcs(template.FuncMap{
	"utc":      func(t time.Time) string { return t.UTC().Format("2006-01-02 15:04:05 UTC") },
	"rfc3339":  func(t time.Time) string { return t.UTC().Format(time.RFC3339) },
	"inc":      func(i int) int { return i + 1 },
	"contains": strings.Contains,
}).ParseFS(pageFS, "page/status.html"))

var statusJS = func() []byte {
	b, err := pageFS.ReadFile("page/status.js")
	if err != nil {
		panic(err) // cannot happen: the file is embedded
	}
	return b
}()

// statusAuditEvents is how many of the newest audit events the page shows.
const statusAuditEvents = 20

// statusCSP allows the page's own script and its inline style block and
// nothing else: no connections, frames, forms or foreign assets.
const statusCSP = "default-src 'none'; style-src 'self' 'unsafe-inline'; script-src 'self'; " +
	"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// routeStatus registers the status page at / and its script. Both are on
// the API's mux, so they follow its access rules (plain HTTP on loopback
// only, mTLS as an admin identity elsewhere).
func (s *Server) routeStatus() {
	s.mux.HandleFunc("GET /{$}", s.statusPage)
	s.mux.HandleFunc("GET /static/status.js", s.statusScript)
}

type statusView struct {
	TrustDomain string
	CA          caView
	Identities  []identityRow
	Nodes       []nodeRow
	Replicas    []api.Replica
	Audit       []registry.Event // newest first
}

// deadline is a time the page counts down to; Past is the text shown once
// it has passed (empty: "expired").
type deadline struct {
	At   time.Time
	Past string
}

type caCertView struct {
	Subject, Serial, SHA256 string
	Expiry                  deadline
}

type caView struct {
	Issuer caCertView
	Roots  []caCertView
	// Rotation is worded by the page with each time once: the phase
	// start only when it differs from the rotation's, the bound only
	// when WaitingFor does not already give it.
	Rotation *api.CARotation
	Leader   *api.Leader
}

type identityRow struct {
	Name, SPIFFEID, State string
	Admin                 bool
	HasCert               bool
	Serial, CertState     string
	Expiry                deadline
	// Renewal is when the renewal loop replaces the certificate, under the
	// default policy; Renews is false for a revoked identity.
	Renewal deadline
	Renews  bool
	// Holders are the agent nodes' own certificates, by node.
	Holders []holderRow
}

type holderRow struct {
	Node, Serial, CertState string
	Expiry                  deadline
}

type ackedView struct {
	TypeURL, Type, Version string
}

type nodeRow struct {
	api.Node
	Acked []ackedView // sorted by type URL
}

func (s *Server) statusPage(w http.ResponseWriter, r *http.Request) {
	view, err := s.statusView(r.Context())
	if err != nil {
		s.fail(w, r, err)
		return
	}
	var buf bytes.Buffer
	if err := statusTmpl.Execute(&buf, view); err != nil {
		s.fail(w, r, err)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", statusCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "no-referrer")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(buf.Bytes())
}

func (s *Server) statusScript(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/javascript; charset=utf-8")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-store")
	_, _ = w.Write(statusJS)
}

func (s *Server) statusView(ctx context.Context) (statusView, error) {
	view := statusView{TrustDomain: s.cfg.TrustDomain}

	c := s.cfg.Authority.CA()
	view.CA.Issuer = caCertRow(caCertJSON(c.Issuer()))
	for _, root := range c.Roots() {
		view.CA.Roots = append(view.CA.Roots, caCertRow(caCertJSON(root)))
	}
	view.CA.Rotation = rotationJSON(s.cfg.Authority.RotationStatus())
	view.CA.Leader = s.leader(ctx)

	ids, err := s.cfg.Identities.Identities(ctx)
	if err != nil {
		return statusView{}, err
	}
	for _, st := range ids {
		row := identityRow{Name: st.Identity.Name, SPIFFEID: st.Identity.SPIFFEID, State: st.Identity.State, Admin: st.Identity.Admin}
		if cert := st.Cert; cert != nil {
			row.HasCert, row.Serial, row.CertState = true, cert.Serial, st.CertState
			row.Expiry = deadline{At: cert.NotAfter}
			// The server's renewal policy is not in Config; the page shows
			// the default one, which is what an unconfigured meshca uses.
			row.Renewal = deadline{At: s.cfg.Renewal.RenewAt(cert.NotBefore, cert.NotAfter, cert.Serial), Past: "due"}
			row.Renews = st.Identity.State != registry.StateRevoked && st.CertState != "revoked"
		}
		hs, err := s.cfg.Identities.HolderCerts(ctx, st.Identity.Name)
		if err != nil {
			return statusView{}, err
		}
		for _, h := range hs {
			row.Holders = append(row.Holders, holderRow{Node: h.Node, Serial: h.Cert.Serial, CertState: h.State, Expiry: deadline{At: h.Cert.NotAfter}})
		}
		view.Identities = append(view.Identities, row)
	}

	nodes, err := s.cfg.Nodes.Nodes(ctx)
	if err != nil {
		return statusView{}, err
	}
	for _, n := range nodes {
		row := nodeRow{Node: s.nodeJSON(n)}
		for typeURL, version := range row.Connection.Acked {
			row.Acked = append(row.Acked, ackedView{TypeURL: typeURL, Type: shortType(typeURL), Version: version})
		}
		slices.SortFunc(row.Acked, func(a, b ackedView) int { return strings.Compare(a.TypeURL, b.TypeURL) })
		view.Nodes = append(view.Nodes, row)
	}

	if view.Replicas, err = s.replicas(ctx); err != nil {
		return statusView{}, err
	}
	view.Audit, err = s.recentAudit(ctx, statusAuditEvents)
	if err != nil {
		return statusView{}, err
	}
	return view, nil
}

func caCertRow(c api.CACert) caCertView {
	return caCertView{Subject: c.Subject, Serial: c.Serial, SHA256: c.SHA256, Expiry: deadline{At: c.NotAfter}}
}

// shortType names an xDS resource by the last element of its type URL:
// type.googleapis.com/envoy.config.cluster.v3.Cluster is "Cluster".
func shortType(typeURL string) string {
	return typeURL[strings.LastIndexAny(typeURL, "./")+1:]
}

// recentAudit returns up to n of the newest audit events, newest first.
func (s *Server) recentAudit(ctx context.Context, n int) ([]registry.Event, error) {
	last, err := s.cfg.Audit.LastAuditSeq(ctx)
	if err != nil {
		return nil, err
	}
	var after uint64
	if last > uint64(n) {
		after = last - uint64(n)
	}
	evs, err := s.cfg.Audit.Audit(ctx, after, n)
	if err != nil {
		return nil, err
	}
	slices.Reverse(evs)
	return evs, nil
}
