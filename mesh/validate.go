package mesh

import (
	"fmt"
	"net"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/identity"
)

// Defaults and bounds of the file format.
const (
	FormatVersion      = 1
	DefaultHTTPSPort   = 8443
	DefaultHTTPPort    = 8080
	DefaultInboundPort = 15443
	maxEndpointWeight  = 10000
	maxTargetWeight    = 1000000
	maxRetries         = 10
	maxTimeout         = 24 * time.Hour
	maxHSTSAge         = 63072000 // two years
	maxNameLen         = 100
)

// Protocols of a service.
const (
	ProtocolHTTP  = "http"
	ProtocolHTTP2 = "http2"
)

var defaultRetryOn = []string{"5xx", "connect-failure", "unavailable"}

// grpcRetryOn are the retry conditions grpc-go accepts.
var grpcRetryOn = []string{"cancelled", "deadline-exceeded", "internal", "resource-exhausted", "unavailable"}

var envoyRetryOn = []string{"5xx", "gateway-error", "reset", "reset-before-request", "connect-failure",
	"envoy-ratelimited", "retriable-4xx", "refused-stream", "http3-post-connect-failure"}

// formatters are the Envoy command operators allowed in response header
// values; anything else would make Envoy NACK the route.
var formatters = []string{"UPSTREAM_HOST", "UPSTREAM_CLUSTER", "UPSTREAM_REMOTE_ADDRESS",
	"UPSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT",
	"DOWNSTREAM_LOCAL_ADDRESS", "DOWNSTREAM_PEER_URI_SAN", "DOWNSTREAM_PEER_SUBJECT",
	"DOWNSTREAM_LOCAL_URI_SAN", "HOSTNAME", "PROTOCOL", "START_TIME", "REQUEST_ID"}

// Validate checks m against trust domain td and returns a *ValidationError
// (errors.Is ErrInvalid) listing every problem. It does not change m:
// call Defaults first, or a value left out is checked as given (version 0
// is refused, for one).
func (m *Mesh) Validate(td spiffeid.TrustDomain) error {
	v := &validator{td: td, m: m, services: map[string]*Service{}, routes: map[string]*Route{}, sidecars: map[string]*Sidecar{}}
	v.mesh()
	if len(v.problems) > 0 {
		return &ValidationError{Problems: v.problems}
	}
	return nil
}

type validator struct {
	td       spiffeid.TrustDomain
	m        *Mesh
	problems []Problem
	services map[string]*Service
	routes   map[string]*Route
	sidecars map[string]*Sidecar
}

func (v *validator) add(path, format string, args ...any) {
	if len(v.problems) > maxProblems {
		return
	}
	if len(v.problems) == maxProblems {
		v.problems = append(v.problems, Problem{Message: "too many problems, stopped here"})
		return
	}
	v.problems = append(v.problems, Problem{Path: path, Message: fmt.Sprintf(format, args...)})
}

func idx(path string, i int) string { return fmt.Sprintf("%s[%d]", path, i) }

func (v *validator) mesh() {
	m := v.m
	if m.Version != FormatVersion {
		v.add("version", "%d is not supported: use %d", m.Version, FormatVersion)
	}
	// Names first, so references can be checked in any order.
	for i := range m.Services {
		s := &m.Services[i]
		p := idx("services", i)
		if v.name(p+".name", s.Name) {
			if v.services[s.Name] != nil {
				v.add(p+".name", "service %q is defined twice", s.Name)
			} else {
				v.services[s.Name] = s
			}
		}
	}
	for i := range m.Routes {
		r := &m.Routes[i]
		p := idx("routes", i)
		if v.name(p+".name", r.Name) {
			if v.routes[r.Name] != nil {
				v.add(p+".name", "route %q is defined twice", r.Name)
			} else {
				v.routes[r.Name] = r
			}
		}
	}
	for i := range m.Sidecars {
		s := &m.Sidecars[i]
		if s.Service != "" && v.sidecars[s.Service] == nil {
			v.sidecars[s.Service] = s
		}
	}
	for i := range m.Services {
		v.service(idx("services", i), &m.Services[i])
	}
	for i := range m.Routes {
		v.route(idx("routes", i), &m.Routes[i])
	}
	if m.FrontProxy != nil {
		v.frontProxy("front_proxy", m.FrontProxy)
	}
	seen := map[string]bool{}
	for i := range m.Sidecars {
		p := idx("sidecars", i)
		s := &m.Sidecars[i]
		if seen[s.Service] && s.Service != "" {
			v.add(p+".service", "service %q has two sidecars entries", s.Service)
		}
		seen[s.Service] = true
		v.sidecar(p, s)
	}
	seen = map[string]bool{}
	for i := range m.GRPC {
		p := idx("grpc", i)
		g := &m.GRPC[i]
		if v.name(p+".name", g.Name) {
			if seen[g.Name] {
				v.add(p+".name", "%q is listed twice", g.Name)
			}
			seen[g.Name] = true
		}
		v.grpc(p, g)
	}
	seen = map[string]bool{}
	for i := range m.GRPCServers {
		p := idx("grpc_servers", i)
		g := &m.GRPCServers[i]
		v.serviceRef(p+".service", g.Service)
		if s := v.services[g.Service]; s != nil && s.Identity == "" {
			v.add(p+".service", "service %q has no identity: its gRPC servers present that identity's certificate; set services[].identity", g.Service)
		}
		if seen[g.Service] && g.Service != "" {
			v.add(p+".service", "service %q has two grpc_servers entries", g.Service)
		}
		seen[g.Service] = true
		v.spiffeMatches(p+".allowed_spiffe_ids", g.AllowedSPIFFEIDs)
	}
}

// name checks a service, route or gRPC name: it becomes part of resource
// names and stat prefixes.
func (v *validator) name(path, s string) bool {
	if s == "" {
		v.add(path, "is required")
		return false
	}
	if len(s) > maxNameLen {
		v.add(path, "%q is longer than %d characters", clip(s), maxNameLen)
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || (c == '-' || c == '.' || c == '_') && i > 0 && i < len(s)-1
		if !ok {
			v.add(path, "%q: use lowercase letters, digits and inner '-', '.', '_'", clip(s))
			return false
		}
	}
	return true
}

func (v *validator) identity(path, name string) bool {
	if _, err := identity.ID(v.td, name); err != nil {
		v.add(path, "%v", err)
		return false
	}
	return true
}

func (v *validator) port(path string, p int) bool {
	if p < 1 || p > 65535 {
		v.add(path, "%d is not a port (1 to 65535)", p)
		return false
	}
	return true
}

func (v *validator) service(p string, s *Service) {
	if s.Identity != "" {
		v.identity(p+".identity", s.Identity)
	}
	switch s.Protocol {
	case ProtocolHTTP, ProtocolHTTP2:
	default:
		v.add(p+".protocol", "%q: use http or http2", clip(s.Protocol))
	}
	seen := map[string]bool{}
	for i := range s.Endpoints {
		e := &s.Endpoints[i]
		ep := idx(p+".endpoints", i)
		if !validHost(e.Address) {
			v.add(ep+".address", "%q is not an IP address or host name", clip(e.Address))
		}
		v.port(ep+".port", e.Port)
		key := net.JoinHostPort(e.Address, fmt.Sprint(e.Port))
		if seen[key] {
			v.add(ep, "%s is listed twice", clip(key))
		}
		seen[key] = true
		switch {
		case e.Weight == nil:
			v.add(ep+".weight", "is required (1 to %d)", maxEndpointWeight)
		case *e.Weight < 1 || *e.Weight > maxEndpointWeight:
			v.add(ep+".weight", "%d: use 1 to %d (grpc-go refuses endpoints of weight 0)", *e.Weight, maxEndpointWeight)
		}
		if l := e.Locality; l != nil {
			v.label(ep+".locality.region", l.Region)
			v.label(ep+".locality.zone", l.Zone)
			v.label(ep+".locality.sub_zone", l.SubZone)
		}
	}
	if v.sidecars[s.Name] != nil && s.Identity == "" {
		v.add(p+".identity", "is required: service %q has a sidecar, which presents this identity", s.Name)
	}
}

func (v *validator) label(path, s string) {
	if len(s) > 128 {
		v.add(path, "longer than 128 characters")
		return
	}
	for _, r := range s {
		if r < 0x21 || r > 0x7e {
			v.add(path, "%q: use printable ASCII without spaces", clip(s))
			return
		}
	}
}

// validHost accepts an IP address or a DNS host name.
func validHost(s string) bool {
	if net.ParseIP(s) != nil {
		return true
	}
	if _, err := identity.DNSNames([]string{s}); err != nil {
		return false
	}
	// "10.0.0" passes the DNS label rules: refuse all-numeric names.
	last := s[strings.LastIndexByte(s, '.')+1:]
	return strings.Trim(last, "0123456789") != ""
}

func (v *validator) route(p string, r *Route) {
	if len(r.Domains) == 0 {
		v.add(p+".domains", "list at least one domain (\"*\" matches any)")
	}
	seen := map[string]bool{}
	for i, d := range r.Domains {
		dp := idx(p+".domains", i)
		if !validDomain(d) {
			v.add(dp, "%q is not a domain: use a host name, \"*\", \"*.example.com\", optionally with :port", clip(d))
		}
		if seen[d] {
			v.add(dp, "%q is listed twice", clip(d))
		}
		seen[d] = true
	}
	if len(r.Rules) == 0 {
		v.add(p+".rules", "list at least one rule")
	}
	for i := range r.Rules {
		v.rule(idx(p+".rules", i), &r.Rules[i])
	}
	v.headers(p+".response_headers", r.ResponseHeaders)
}

func validDomain(d string) bool {
	if d == "*" {
		return true
	}
	host := d
	if h, port, err := net.SplitHostPort(d); err == nil {
		var n int
		if _, err := fmt.Sscanf(port, "%d", &n); err != nil || n < 1 || n > 65535 || fmt.Sprint(n) != port {
			return false
		}
		host = h
	}
	host = strings.TrimPrefix(host, "*.")
	_, err := identity.DNSNames([]string{host})
	return err == nil
}

func (v *validator) rule(p string, r *Rule) {
	mp := p + ".match"
	switch {
	case r.Match.Prefix != "" && r.Match.Path != "":
		v.add(mp, "set prefix or path, not both")
	case r.Match.Prefix == "" && r.Match.Path == "":
		v.add(mp, "set prefix or path")
	case r.Match.Prefix != "":
		v.urlPath(mp+".prefix", r.Match.Prefix)
	default:
		v.urlPath(mp+".path", r.Match.Path)
	}
	for i := range r.Match.Headers {
		h := &r.Match.Headers[i]
		hp := idx(mp+".headers", i)
		v.headerName(hp+".name", h.Name)
		n := 0
		if h.Exact != "" {
			n++
			v.headerValue(hp+".exact", h.Exact)
		}
		if h.Prefix != "" {
			n++
			v.headerValue(hp+".prefix", h.Prefix)
		}
		if h.Present {
			n++
		}
		if n != 1 {
			v.add(hp, "set exactly one of exact, prefix, present")
		}
	}
	switch {
	case r.Service != "" && len(r.Weighted) > 0:
		v.add(p, "set service or weighted, not both")
	case r.Service != "":
		v.serviceRef(p+".service", r.Service)
	case len(r.Weighted) > 0:
		total := 0
		seen := map[string]bool{}
		ok := true
		for i, w := range r.Weighted {
			wp := idx(p+".weighted", i)
			v.serviceRef(wp+".service", w.Service)
			if seen[w.Service] {
				v.add(wp+".service", "%q is listed twice", clip(w.Service))
			}
			seen[w.Service] = true
			switch {
			case w.Weight == nil:
				v.add(wp+".weight", "is required (0 sends no traffic)")
				ok = false
			case *w.Weight < 0 || *w.Weight > maxTargetWeight:
				v.add(wp+".weight", "%d: use 0 to %d", *w.Weight, maxTargetWeight)
				ok = false
			default:
				total += *w.Weight
			}
		}
		if ok && total == 0 {
			v.add(p+".weighted", "the weights add up to 0: at least one must be above 0")
		}
	default:
		v.add(p, "set service or weighted")
	}
	if r.Timeout != "" {
		v.duration(p+".timeout", r.Timeout)
	}
	if rt := r.Retries; rt != nil {
		rp := p + ".retries"
		if rt.NumRetries < 1 || rt.NumRetries > maxRetries {
			v.add(rp+".num_retries", "%d: use 1 to %d", rt.NumRetries, maxRetries)
		}
		seen := map[string]bool{}
		for i, c := range rt.On {
			if !slices.Contains(envoyRetryOn, c) && !slices.Contains(grpcRetryOn, c) {
				v.add(idx(rp+".on", i), "%q is not a retry condition (use one of %s)", clip(c),
					strings.Join(append(slices.Clone(envoyRetryOn), grpcRetryOn...), ", "))
			}
			if seen[c] {
				v.add(idx(rp+".on", i), "%q is listed twice", clip(c))
			}
			seen[c] = true
		}
		if rt.PerTryTimeout != "" {
			v.duration(rp+".per_try_timeout", rt.PerTryTimeout)
		}
	}
}

func (v *validator) serviceRef(path, name string) {
	if name == "" {
		v.add(path, "is required")
		return
	}
	if v.services[name] == nil {
		v.add(path, "unknown service %q", clip(name))
	}
}

func (v *validator) routeRef(path, name string) bool {
	if name == "" {
		v.add(path, "is required")
		return false
	}
	if v.routes[name] == nil {
		v.add(path, "unknown route %q", clip(name))
		return false
	}
	return true
}

func (v *validator) urlPath(path, s string) {
	if !strings.HasPrefix(s, "/") {
		v.add(path, "%q must start with /", clip(s))
		return
	}
	if len(s) > 1024 {
		v.add(path, "longer than 1024 characters")
		return
	}
	for _, r := range s {
		if r <= 0x20 || r >= 0x7f || r == '?' || r == '#' {
			v.add(path, "%q: use printable ASCII without spaces, '?' or '#'", clip(s))
			return
		}
	}
}

func (v *validator) duration(path, s string) {
	d, err := time.ParseDuration(s)
	if err != nil || d <= 0 || d > maxTimeout || d%time.Millisecond != 0 {
		v.add(path, "%q is not a duration between 1ms and %s (e.g. 250ms, 5s, 1m)", clip(s), maxTimeout)
	}
}

// headerName accepts lowercase HTTP token names; pseudo-headers and host
// cannot be matched or set this way.
func (v *validator) headerName(path, s string) bool {
	if s == "" {
		v.add(path, "is required")
		return false
	}
	if len(s) > 256 {
		v.add(path, "longer than 256 characters")
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&'*+-.^_`|~", c) >= 0) {
			v.add(path, "%q is not a header name: use lowercase letters, digits and '-'", clip(s))
			return false
		}
	}
	if s == "host" {
		v.add(path, "host cannot be used here")
		return false
	}
	return true
}

func (v *validator) headerValue(path, s string) bool {
	if len(s) > 4096 || !utf8.ValidString(s) {
		v.add(path, "not a header value (at most 4096 bytes of UTF-8)")
		return false
	}
	for _, r := range s {
		if r < 0x20 && r != '\t' || r == 0x7f {
			v.add(path, "control characters are not allowed in a header value")
			return false
		}
	}
	return true
}

func (v *validator) headers(path string, hs []Header) {
	seen := map[string]bool{}
	for i, h := range hs {
		hp := idx(path, i)
		if v.headerName(hp+".name", h.Name) {
			if seen[h.Name] {
				v.add(hp+".name", "%q is listed twice", h.Name)
			}
			seen[h.Name] = true
		}
		if h.Name == "strict-transport-security" {
			v.add(hp+".name", "set HSTS with front_proxy.https.hsts")
		}
		if v.headerValue(hp+".value", h.Value) {
			if msg := checkFormatters(h.Value); msg != "" {
				v.add(hp+".value", "%s", msg)
			}
		}
	}
}

// checkFormatters checks every %...% in an Envoy header value.
func checkFormatters(s string) string {
	for {
		i := strings.IndexByte(s, '%')
		if i < 0 {
			return ""
		}
		s = s[i+1:]
		if strings.HasPrefix(s, "%") { // "%%" is a literal %
			s = s[1:]
			continue
		}
		j := strings.IndexByte(s, '%')
		if j < 0 {
			return "a lone % starts a formatter: write %% for a literal percent sign"
		}
		op := s[:j]
		s = s[j+1:]
		if !slices.Contains(formatters, op) {
			return fmt.Sprintf("%%%s%% is not a supported formatter (use one of %%%s%%, or %%%% for a literal %%)", clip(op), strings.Join(formatters, "%, %"))
		}
	}
}

func (v *validator) spiffeMatches(path string, ms []SPIFFEMatch) {
	for i, sm := range ms {
		p := idx(path, i)
		switch {
		case (sm.Exact == "") == (sm.Prefix == ""):
			v.add(p, "set exactly one of exact, prefix")
		case sm.Exact != "":
			if _, err := identity.ParseID(v.td, sm.Exact); err != nil {
				v.add(p+".exact", "%q: %v", clip(sm.Exact), err)
			}
		default:
			if msg := checkSPIFFEPrefix(v.td, sm.Prefix); msg != "" {
				v.add(p+".prefix", "%q: %s", clip(sm.Prefix), msg)
			}
		}
	}
}

func checkSPIFFEPrefix(td spiffeid.TrustDomain, s string) string {
	root := td.IDString() + "/"
	if !strings.HasPrefix(s, root) {
		return fmt.Sprintf("must start with %s (the mesh trust domain)", root)
	}
	rest := strings.TrimSuffix(strings.TrimPrefix(s, root), "/")
	if rest == "" {
		return ""
	}
	if err := spiffeid.ValidatePath("/" + rest); err != nil {
		return err.Error()
	}
	return ""
}

func (v *validator) frontProxy(p string, f *FrontProxy) {
	if f.Identity != "" {
		v.identity(p+".identity", f.Identity)
	}
	if f.HTTPS == nil && f.HTTP == nil {
		v.add(p, "set https, http or both")
	}
	needsIdentity := ""
	if h := f.HTTPS; h != nil {
		hp := p + ".https"
		v.port(hp+".port", h.Port)
		v.routeRef(hp+".route", h.Route)
		needsIdentity = hp
		switch h.ClientCerts {
		case ClientCertsNone, ClientCertsOptional, ClientCertsRequired:
		default:
			v.add(hp+".client_certs", "%q: use none, optional or required", clip(h.ClientCerts))
		}
		if h.ClientCerts == ClientCertsNone {
			if len(h.AllowedSPIFFEIDs) > 0 {
				v.add(hp+".allowed_spiffe_ids", "client_certs is none: set it to optional or required")
			}
			if h.ForwardClientCert {
				v.add(hp+".forward_client_cert", "client_certs is none: there is no certificate to forward")
			}
		}
		v.spiffeMatches(hp+".allowed_spiffe_ids", h.AllowedSPIFFEIDs)
		if s := h.HSTS; s != nil {
			if s.MaxAge < 1 || s.MaxAge > maxHSTSAge {
				v.add(hp+".hsts.max_age", "%d: use 1 to %d seconds", s.MaxAge, maxHSTSAge)
			}
			if f.HTTP != nil && f.HTTP.Route != "" {
				v.add(hp+".hsts", "HSTS enforces HTTPS, but http serves a route in plain HTTP: set http.redirect_to_https or drop hsts")
			}
		}
	}
	if h := f.HTTP; h != nil {
		hp := p + ".http"
		v.port(hp+".port", h.Port)
		if f.HTTPS != nil && h.Port == f.HTTPS.Port {
			v.add(hp+".port", "%d is the https port too", h.Port)
		}
		switch {
		case (h.Route == "") == (h.RedirectToHTTPS == ""):
			v.add(hp, "set exactly one of route, redirect_to_https")
		case h.Route != "":
			if v.routeRef(hp+".route", h.Route) && v.mtlsTarget(h.Route) != "" && needsIdentity == "" {
				needsIdentity = hp + ".route"
			}
		default:
			if h.RedirectToHTTPS != RedirectPermanent && h.RedirectToHTTPS != RedirectMoved {
				v.add(hp+".redirect_to_https", "%q: use %s (308) or %s (301)", clip(h.RedirectToHTTPS), RedirectPermanent, RedirectMoved)
			}
			if f.HTTPS == nil {
				v.add(hp+".redirect_to_https", "there is no https listener to redirect to")
			}
		}
	}
	if needsIdentity != "" && f.Identity == "" {
		v.add(p+".identity", "is required by %s (the front proxy's certificate)", needsIdentity)
	}
}

// mtlsTarget returns a service reached over mTLS (one with a sidecar)
// among the targets of route r, or "".
func (v *validator) mtlsTarget(route string) string {
	for _, s := range v.routeServices(route, false) {
		if v.sidecars[s] != nil {
			return s
		}
	}
	return ""
}

// routeServices lists the services route sends to; with positiveOnly,
// weighted targets of weight 0 are left out.
func (v *validator) routeServices(route string, positiveOnly bool) []string {
	r := v.routes[route]
	if r == nil {
		return nil
	}
	return routeTargets(r, positiveOnly)
}

func routeTargets(r *Route, positiveOnly bool) []string {
	var out []string
	for _, rule := range r.Rules {
		if rule.Service != "" {
			out = append(out, rule.Service)
		}
		for _, w := range rule.Weighted {
			if !positiveOnly || w.Weight != nil && *w.Weight > 0 {
				out = append(out, w.Service)
			}
		}
	}
	slices.Sort(out)
	return slices.Compact(out)
}

func (v *validator) sidecar(p string, s *Sidecar) {
	v.serviceRef(p+".service", s.Service)
	v.port(p+".inbound_port", s.InboundPort)
	if s.AppPort == 0 {
		v.add(p+".app_port", "is required: the port the application listens on at 127.0.0.1")
	} else {
		v.port(p+".app_port", s.AppPort)
	}
	if s.AppPort == s.InboundPort {
		v.add(p+".app_port", "%d is the inbound port too", s.AppPort)
	}
	v.spiffeMatches(p+".allowed_spiffe_ids", s.AllowedSPIFFEIDs)
	ports := map[int]bool{s.InboundPort: true, s.AppPort: true}
	seen := map[string]bool{}
	for i, o := range s.Outbound {
		op := idx(p+".outbound", i)
		v.serviceRef(op+".service", o.Service)
		if seen[o.Service] {
			v.add(op+".service", "%q is listed twice", clip(o.Service))
		}
		seen[o.Service] = true
		if v.port(op+".port", o.Port) {
			if ports[o.Port] {
				v.add(op+".port", "%d is already used by this sidecar", o.Port)
			}
			ports[o.Port] = true
		}
	}
}

func (v *validator) grpc(p string, g *GRPCService) {
	var targets []string
	if g.Route == "" {
		v.serviceRef(p+".name", g.Name)
		if v.routes[g.Name] != nil {
			v.add(p+".name", "%q is also a route name: set route, or rename one of them", g.Name)
		}
		targets = []string{g.Name}
	} else if v.routeRef(p+".route", g.Route) {
		targets = v.routeServices(g.Route, true)
	}
	for _, t := range targets {
		s := v.services[t]
		if s == nil {
			continue
		}
		if v.sidecars[t] != nil {
			// grpc nodes get clusters without TLS (grpc-go NACKs SDS), and
			// a sidecar's inbound listener only speaks mTLS.
			v.add(p, "service %q has a sidecar (mTLS only): grpc nodes cannot reach it in plain text", t)
		}
		for _, e := range s.Endpoints {
			if net.ParseIP(e.Address) == nil {
				v.add(p, "service %q has host name endpoint %q: grpc nodes need IP addresses", t, clip(e.Address))
				break
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

func netIP(s string) bool { return net.ParseIP(s) != nil }
