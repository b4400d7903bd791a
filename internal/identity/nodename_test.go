package identity_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/identity"
)

// Errors about node names speak of node names, not identities, and name
// the node as given; they still match ErrInvalidName.
func TestNodeNameErrors(t *testing.T) {
	td, _ := identity.TrustDomain("mesh.local")
	for _, tt := range []struct{ name, in, want string }{
		{"space", "a b", `invalid node name "a b": `},
		{"slash", "a/b", `invalid node name "a/b": node names are a single segment`},
		{"empty", "", "invalid node name: empty"},
		{"full id", "spiffe://mesh.local/node/a", "invalid node name: give the name without"},
		{"too long", strings.Repeat("a", identity.MaxNameLength+1), "invalid node name: 256 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := identity.NodeID(td, tt.in)
			if err == nil || !strings.HasPrefix(err.Error(), tt.want) {
				t.Fatalf("err = %v, want it to start with %q", err, tt.want)
			}
			if strings.Contains(err.Error(), "identity") || strings.Contains(err.Error(), "node/") {
				t.Fatalf("err = %v talks of identities or the node/ path", err)
			}
			if !errors.Is(err, identity.ErrInvalidNodeName) || !errors.Is(err, identity.ErrInvalidName) {
				t.Fatalf("err = %v does not match ErrInvalidNodeName and ErrInvalidName", err)
			}
		})
	}
	if _, err := identity.ID(td, "a b"); err == nil || errors.Is(err, identity.ErrInvalidNodeName) || !strings.HasPrefix(err.Error(), `invalid identity name "a b"`) {
		t.Fatalf("identity name error = %v", err)
	}
}
