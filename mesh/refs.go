package mesh

import (
	"strings"

	"github.com/meshca/meshca/internal/identity"
)

// IdentityRef is a place in a mesh document that names an identity.
type IdentityRef struct {
	Path string // e.g. "services[1].identity"
	Name string // the identity name, e.g. "echo"
}

// IdentityRefs lists every identity m names, in document order: the
// identity of each service and of the front proxy, and each exact
// allowed_spiffe_ids entry (prefixes name no one in particular). The
// caller checks that they exist: a mesh that names a missing identity
// builds, but its TLS handshakes fail. m must come from Parse.
func (m *Mesh) IdentityRefs() []IdentityRef {
	var refs []IdentityRef
	exact := func(path string, ms []SPIFFEMatch) {
		for i, sm := range ms {
			if sm.Exact == "" {
				continue
			}
			id, err := identity.ParseID(m.parsedTD, sm.Exact)
			if err != nil {
				continue // Parse refused it already
			}
			refs = append(refs, IdentityRef{Path: idx(path, i) + ".exact", Name: strings.TrimPrefix(id.Path(), "/")})
		}
	}
	for i, s := range m.Services {
		if s.Identity != "" {
			refs = append(refs, IdentityRef{Path: idx("services", i) + ".identity", Name: s.Identity})
		}
	}
	if f := m.FrontProxy; f != nil {
		if f.Identity != "" {
			refs = append(refs, IdentityRef{Path: "front_proxy.identity", Name: f.Identity})
		}
		if f.HTTPS != nil {
			exact("front_proxy.https.allowed_spiffe_ids", f.HTTPS.AllowedSPIFFEIDs)
		}
	}
	for i, s := range m.Sidecars {
		exact(idx("sidecars", i)+".allowed_spiffe_ids", s.AllowedSPIFFEIDs)
	}
	for i, g := range m.GRPCServers {
		exact(idx("grpc_servers", i)+".allowed_spiffe_ids", g.AllowedSPIFFEIDs)
	}
	return refs
}
