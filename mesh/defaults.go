package mesh

import "slices"

// Defaults fills in every value m leaves out that has a default: the
// format version, each service's protocol and endpoint weights, a rule's
// match (prefix "/"), retry conditions, the front proxy's ports and client
// certificate mode, and sidecars' inbound ports. Empty lists become empty,
// and an empty locality none. It checks nothing (Validate does) and is
// idempotent; Parse calls it before Validate.
func Defaults(m *Mesh) {
	if m.Version == 0 {
		m.Version = FormatVersion
	}
	if m.Services == nil {
		m.Services = []Service{}
	}
	for i := range m.Services {
		s := &m.Services[i]
		if s.Protocol == "" {
			s.Protocol = ProtocolHTTP
		}
		if s.Endpoints == nil {
			s.Endpoints = []Endpoint{}
		}
		for j := range s.Endpoints {
			e := &s.Endpoints[j]
			if e.Weight == nil {
				e.Weight = ptr(1)
			}
			if e.Locality != nil && *e.Locality == (Locality{}) {
				e.Locality = nil
			}
		}
	}
	for i := range m.Routes {
		for j := range m.Routes[i].Rules {
			r := &m.Routes[i].Rules[j]
			if r.Match.Prefix == "" && r.Match.Path == "" {
				r.Match.Prefix = "/"
			}
			if r.Retries != nil && len(r.Retries.On) == 0 {
				r.Retries.On = slices.Clone(defaultRetryOn)
			}
		}
	}
	if f := m.FrontProxy; f != nil {
		if h := f.HTTPS; h != nil {
			if h.Port == 0 {
				h.Port = DefaultHTTPSPort
			}
			if h.ClientCerts == "" {
				h.ClientCerts = ClientCertsNone
			}
		}
		if h := f.HTTP; h != nil && h.Port == 0 {
			h.Port = DefaultHTTPPort
		}
	}
	for i := range m.Sidecars {
		if s := &m.Sidecars[i]; s.InboundPort == 0 {
			s.InboundPort = DefaultInboundPort
		}
	}
}
