// Package identity validates the names meshca issues certificates for: the
// trust domain, identity names (the path of a SPIFFE ID), node names and DNS
// SANs. Everything a caller sends passes through here before it reaches the
// CA, so that no unchecked string ever becomes a SAN.
package identity

import (
	"errors"
	"fmt"
	"net"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/text"
)

// Limits on names. A SPIFFE ID is capped at 2048 bytes by the SPIFFE spec.
const (
	MaxIDLength   = 2048
	MaxNameLength = 255
	MaxDNSLength  = 253
	MaxDNSNames   = 32
)

// Sentinel errors. Callers test them with errors.Is; the wrapped message says
// what was wrong with which value.
var (
	ErrInvalidTrustDomain = errors.New("invalid trust domain")
	ErrInvalidName        = errors.New("invalid identity name")
	ErrForeignTrustDomain = errors.New("SPIFFE ID belongs to another trust domain")
	ErrInvalidDNSName     = errors.New("invalid DNS name")
	// ErrInvalidNodeName: a node name that cannot be used. errors.Is(err,
	// ErrInvalidName) holds for it too: a node name is the last segment of
	// the node's SPIFFE ID.
	ErrInvalidNodeName error = nodeNameError{}
)

type nodeNameError struct{}

func (nodeNameError) Error() string        { return "invalid node name" }
func (nodeNameError) Is(target error) bool { return target == ErrInvalidName }

// TrustDomain parses and checks a trust domain name such as "mesh.local".
func TrustDomain(name string) (spiffeid.TrustDomain, error) {
	if name == "" {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: empty (use a lowercase DNS-like name such as mesh.local)", ErrInvalidTrustDomain)
	}
	if strings.Contains(name, "://") {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w %q: give the bare name, without spiffe://", ErrInvalidTrustDomain, name)
	}
	// Trust domains go into certificate subjects (O), which X.509 caps at 64.
	if len(name) > 64 {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w: longer than 64 characters", ErrInvalidTrustDomain)
	}
	td, err := spiffeid.TrustDomainFromString(name)
	if err != nil {
		return spiffeid.TrustDomain{}, fmt.Errorf("%w %q: %v", ErrInvalidTrustDomain, name, err)
	}
	return td, nil
}

// ID returns the SPIFFE ID spiffe://<td>/<name> for an identity name. The
// name is a SPIFFE path without its leading slash: segments of letters,
// digits, '.', '-' and '_' separated by '/'. It must not look like a node
// identity (node/...), which meshca reserves for itself.
func ID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	if err := checkName(ErrInvalidName, name); err != nil {
		return spiffeid.ID{}, err
	}
	if name == "node" || strings.HasPrefix(name, "node/") {
		return spiffeid.ID{}, fmt.Errorf("%w %q: the node/ prefix is reserved for node certificates", ErrInvalidName, name)
	}
	if name == ServerName {
		return spiffeid.ID{}, fmt.Errorf("%w %q: reserved for meshca's own server certificate", ErrInvalidName, name)
	}
	return pathID(ErrInvalidName, td, name, name)
}

// ServerName is the identity of meshca's own servers (xDS and a remote
// admin API): spiffe://<td>/meshca. Operators cannot register it.
const ServerName = "meshca"

// ServerID returns spiffe://<td>/meshca.
func ServerID(td spiffeid.TrustDomain) spiffeid.ID {
	id, _ := pathID(ErrInvalidName, td, ServerName, ServerName) // a constant, valid path
	return id
}

// NodeID returns spiffe://<td>/node/<node> for a node name.
// Its errors speak of the node name (ErrInvalidNodeName).
func NodeID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	if err := checkName(ErrInvalidNodeName, node); err != nil {
		return spiffeid.ID{}, err
	}
	if strings.Contains(node, "/") {
		return spiffeid.ID{}, fmt.Errorf("%w %q: node names are a single segment (no '/')", ErrInvalidNodeName, clip(node))
	}
	return pathID(ErrInvalidNodeName, td, "node/"+node, node)
}

// checkName checks what every name must be; kind is the sentinel of the
// errors (identity or node name).
func checkName(kind error, name string) error {
	switch {
	case name == "":
		return fmt.Errorf("%w: empty", kind)
	case len(name) > MaxNameLength:
		return fmt.Errorf("%w: %d bytes, the limit is %d", kind, len(name), MaxNameLength)
	case strings.HasPrefix(name, "spiffe://"):
		return fmt.Errorf("%w: give the name without spiffe://<trust-domain>/", kind)
	}
	return nil
}

// pathID makes spiffe://<td>/<path>; errors name shown, the name as the
// caller gave it.
func pathID(kind error, td spiffeid.TrustDomain, path, shown string) (spiffeid.ID, error) {
	id, err := spiffeid.FromPath(td, "/"+path)
	if err != nil {
		chars := "letters, digits, '.', '-', '_' and '/' between segments"
		if kind == ErrInvalidNodeName {
			chars = "letters, digits, '.', '-' and '_'"
		}
		return spiffeid.ID{}, fmt.Errorf("%w %q: %v (use %s)", kind, clip(shown), err, chars)
	}
	if len(id.String()) > MaxIDLength {
		return spiffeid.ID{}, fmt.Errorf("%w: SPIFFE ID longer than %d bytes", kind, MaxIDLength)
	}
	return id, nil
}

// ParseID parses a full SPIFFE ID and checks that it belongs to td.
func ParseID(td spiffeid.TrustDomain, s string) (spiffeid.ID, error) {
	if len(s) > MaxIDLength {
		return spiffeid.ID{}, fmt.Errorf("%w: SPIFFE ID longer than %d bytes", ErrInvalidName, MaxIDLength)
	}
	id, err := spiffeid.FromString(s)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %v", ErrInvalidName, err)
	}
	if !id.MemberOf(td) {
		return spiffeid.ID{}, fmt.Errorf("%w: %s is not in %s", ErrForeignTrustDomain, id.TrustDomain(), td)
	}
	return id, nil
}

// DNSNames checks DNS SANs: lowercase host names of letter-digit-hyphen
// labels, at most one leading "*." wildcard label, no IP addresses, no
// duplicates. It returns them in the order given.
func DNSNames(names []string) ([]string, error) {
	if len(names) > MaxDNSNames {
		return nil, fmt.Errorf("%w: %d names, the limit is %d", ErrInvalidDNSName, len(names), MaxDNSNames)
	}
	seen := make(map[string]bool, len(names))
	for _, n := range names {
		if err := dnsName(n); err != nil {
			return nil, err
		}
		if seen[n] {
			return nil, fmt.Errorf("%w %q: listed twice", ErrInvalidDNSName, n)
		}
		seen[n] = true
	}
	return names, nil
}

func dnsName(n string) error {
	bad := func(why string) error { return fmt.Errorf("%w %q: %s", ErrInvalidDNSName, clip(n), why) }
	if n == "" {
		return bad("empty")
	}
	if len(n) > MaxDNSLength {
		return bad(fmt.Sprintf("longer than %d characters", MaxDNSLength))
	}
	if net.ParseIP(n) != nil {
		return bad("an IP address is not a DNS name")
	}
	labels := strings.Split(n, ".")
	for i, l := range labels {
		if i == 0 && l == "*" && len(labels) > 2 {
			continue
		}
		if l == "" || len(l) > 63 {
			return bad("labels must be 1 to 63 characters")
		}
		for j := 0; j < len(l); j++ {
			c := l[j]
			ok := c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && j != 0 && j != len(l)-1
			if !ok {
				return bad("use lowercase letters, digits and inner hyphens only")
			}
		}
	}
	return nil
}

// clip keeps hostile input from flooding an error message.
func clip(s string) string { return text.Clip(s, 80) }
