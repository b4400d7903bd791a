package identity_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/identity"
)

func TestID(t *testing.T) {
	td, err := identity.TrustDomain("mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{name: "simple", in: "echo", want: "spiffe://mesh.local/echo"},
		{name: "segments", in: "ns/prod/echo-v2", want: "spiffe://mesh.local/ns/prod/echo-v2"},
		{name: "empty", in: "", wantErr: identity.ErrInvalidName},
		{name: "dot-dot", in: "../admin", wantErr: identity.ErrInvalidName},
		{name: "uppercase is allowed by SPIFFE paths", in: "Echo", want: "spiffe://mesh.local/Echo"},
		{name: "space", in: "not a name", wantErr: identity.ErrInvalidName},
		{name: "trailing slash", in: "echo/", wantErr: identity.ErrInvalidName},
		{name: "full id", in: "spiffe://mesh.local/echo", wantErr: identity.ErrInvalidName},
		{name: "reserved node prefix", in: "node/a", wantErr: identity.ErrInvalidName},
		{name: "reserved server name", in: "meshca", wantErr: identity.ErrInvalidName},
		{name: "server name as a prefix is fine", in: "meshca-ui", want: "spiffe://mesh.local/meshca-ui"},
		{name: "over 2KiB", in: strings.Repeat("a", 2100), wantErr: identity.ErrInvalidName},
		{name: "percent", in: "a%2e", wantErr: identity.ErrInvalidName},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := identity.ID(td, tt.in)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("ID(%q) error = %v, want %v", tt.in, err, tt.wantErr)
				}
				if len(err.Error()) > 300 {
					t.Fatalf("error message is %d bytes: hostile input must not flood it", len(err.Error()))
				}
				return
			}
			if err != nil {
				t.Fatalf("ID(%q): %v", tt.in, err)
			}
			if id.String() != tt.want {
				t.Fatalf("ID(%q) = %s, want %s", tt.in, id, tt.want)
			}
		})
	}
}

func TestTrustDomain(t *testing.T) {
	for _, bad := range []string{"", "Mesh.Local", "spiffe://mesh.local", "mesh local", strings.Repeat("a", 65)} {
		if _, err := identity.TrustDomain(bad); !errors.Is(err, identity.ErrInvalidTrustDomain) {
			t.Errorf("TrustDomain(%q) error = %v, want ErrInvalidTrustDomain", bad, err)
		}
	}
}

func TestParseIDForeignTrustDomain(t *testing.T) {
	td, _ := identity.TrustDomain("mesh.local")
	if _, err := identity.ParseID(td, "spiffe://evil.example/echo"); !errors.Is(err, identity.ErrForeignTrustDomain) {
		t.Fatalf("error = %v, want ErrForeignTrustDomain", err)
	}
	if _, err := identity.ParseID(td, "spiffe://mesh.local/"+strings.Repeat("x", 3000)); !errors.Is(err, identity.ErrInvalidName) {
		t.Fatalf("error = %v, want ErrInvalidName", err)
	}
	id, err := identity.ParseID(td, "spiffe://mesh.local/echo")
	if err != nil || id.Path() != "/echo" {
		t.Fatalf("ParseID = %v, %v", id, err)
	}
}

func TestNodeID(t *testing.T) {
	td, _ := identity.TrustDomain("mesh.local")
	id, err := identity.NodeID(td, "edge-1")
	if err != nil || id.String() != "spiffe://mesh.local/node/edge-1" {
		t.Fatalf("NodeID = %v, %v", id, err)
	}
	if _, err := identity.NodeID(td, "a/b"); !errors.Is(err, identity.ErrInvalidName) {
		t.Fatalf("multi-segment node name: error = %v", err)
	}
}

func TestDNSNames(t *testing.T) {
	tests := []struct {
		name  string
		in    []string
		valid bool
	}{
		{name: "plain", in: []string{"echo.mesh.local", "localhost"}, valid: true},
		{name: "wildcard", in: []string{"*.example.com"}, valid: true},
		{name: "wildcard too broad", in: []string{"*.com"}},
		{name: "inner wildcard", in: []string{"a.*.example.com"}},
		{name: "uppercase", in: []string{"Echo.local"}},
		{name: "ip", in: []string{"10.0.0.1"}},
		{name: "space", in: []string{"not a host!"}},
		{name: "empty", in: []string{""}},
		{name: "leading hyphen", in: []string{"-a.local"}},
		{name: "long label", in: []string{strings.Repeat("a", 64) + ".local"}},
		{name: "duplicate", in: []string{"a.local", "a.local"}},
		{name: "too many", in: func() []string {
			var s []string
			for i := 0; i < 1000; i++ {
				s = append(s, "h"+strings.Repeat("x", i%50)+".local")
			}
			return s
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := identity.DNSNames(tt.in)
			if tt.valid && err != nil {
				t.Fatalf("DNSNames(%q): %v", tt.in, err)
			}
			if !tt.valid && !errors.Is(err, identity.ErrInvalidDNSName) {
				t.Fatalf("DNSNames error = %v, want ErrInvalidDNSName", err)
			}
		})
	}
}
