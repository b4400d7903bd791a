package identity_test

import (
	"net"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/internal/identity"
)

// checkAccepted asserts what every ID meshca accepts must satisfy.
func checkAccepted(t *testing.T, td spiffeid.TrustDomain, id spiffeid.ID, from string) {
	t.Helper()
	s := id.String()
	if len(s) > identity.MaxIDLength {
		t.Fatalf("%q: accepted ID of %d bytes (limit %d)", from, len(s), identity.MaxIDLength)
	}
	back, err := spiffeid.FromString(s)
	if err != nil || back != id {
		t.Fatalf("%q: accepted %q does not round-trip through spiffeid.FromString: %v", from, s, err)
	}
	if !id.MemberOf(td) {
		t.Fatalf("%q: accepted %q outside %s", from, s, td)
	}
}

func FuzzID(f *testing.F) {
	for _, s := range []string{
		"echo", "web/api", "a.b-c_d", "node/n1", "meshca", "", "/", "a//b", "a/./b", "a/../b",
		"spiffe://mesh.local/echo", "spiffe://evil.example/echo", "ECHO", "é", "a b", "a%2fb",
		strings.Repeat("a", 256), strings.Repeat("ab/", 800), "\x00", "a?b#c",
	} {
		f.Add(s)
	}
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	f.Fuzz(func(t *testing.T, s string) {
		if id, err := identity.ID(td, s); err == nil {
			checkAccepted(t, td, id, s)
			if id.Path() != "/"+s {
				t.Fatalf("ID(%q) = %q: path is not the name", s, id)
			}
			if strings.HasPrefix(s, "node/") || s == identity.ServerName {
				t.Fatalf("ID(%q) accepted a reserved name", s)
			}
		}
		if id, err := identity.NodeID(td, s); err == nil {
			checkAccepted(t, td, id, s)
		}
		if id, err := identity.ParseID(td, s); err == nil {
			checkAccepted(t, td, id, s)
		}
		if id, err := identity.ParseID(td, "spiffe://mesh.local/"+s); err == nil {
			checkAccepted(t, td, id, s)
		}
	})
}

func FuzzDNSNames(f *testing.F) {
	for _, s := range []string{
		"example.com", "a.example.com,b.example.com", "*.example.com", "*.com", "*.*.a.com",
		"10.0.0.1", "::1", "UPPER.example", "-a.com", "a-.com", "a..com", "", ",", "a.com,a.com",
		strings.Repeat("a.", 130) + "com", strings.Repeat("x.com,", 40), "xn--bcher-kva.example",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		in := strings.Split(s, ",")
		out, err := identity.DNSNames(in)
		if err != nil {
			return
		}
		if len(out) > identity.MaxDNSNames || len(out) != len(in) {
			t.Fatalf("DNSNames(%q) = %d names", s, len(out))
		}
		seen := map[string]bool{}
		for i, n := range out {
			if n != in[i] {
				t.Fatalf("DNSNames changed %q to %q", in[i], n)
			}
			if n == "" || len(n) > identity.MaxDNSLength || net.ParseIP(n) != nil || seen[n] {
				t.Fatalf("DNSNames accepted %q", n)
			}
			seen[n] = true
			rest := strings.TrimPrefix(n, "*.")
			if strings.Contains(rest, "*") || strings.ToLower(n) != n || strings.ContainsAny(n, " /:@%\x00") {
				t.Fatalf("DNSNames accepted %q", n)
			}
		}
	})
}
