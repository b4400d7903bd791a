package xds

import (
	"errors"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

func bundleSecret(name, ca string) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: &core.DataSource{Specifier: &core.DataSource_InlineString{InlineString: ca}},
	}}}
}

func TestBuildSnapshotVersions(t *testing.T) {
	a := map[string][]types.Resource{resource.SecretType: {bundleSecret("spiffe://mesh.local", "ca-1"), bundleSecret("b", "x")}}
	// Same content in another order: same version.
	b := map[string][]types.Resource{resource.SecretType: {bundleSecret("b", "x"), bundleSecret("spiffe://mesh.local", "ca-1")}}
	c := map[string][]types.Resource{resource.SecretType: {bundleSecret("spiffe://mesh.local", "ca-2"), bundleSecret("b", "x")}}
	sa, _, err := buildSnapshot(a, nil)
	if err != nil {
		t.Fatal(err)
	}
	sb, _, _ := buildSnapshot(b, nil)
	sc, _, _ := buildSnapshot(c, nil)
	va, vb, vc := sa.GetVersion(resource.SecretType), sb.GetVersion(resource.SecretType), sc.GetVersion(resource.SecretType)
	if va != vb {
		t.Fatalf("order changed the version: %s != %s", va, vb)
	}
	if va == vc {
		t.Fatal("changed content kept the version")
	}
	if got := len(sa.GetResources(resource.SecretType)); got != 2 {
		t.Fatalf("%d secrets in the snapshot", got)
	}
	if v := sa.GetVersion(resource.ListenerType); v == "" {
		t.Fatal("types without resources need a version too, or their watches never answer")
	}
}

func TestBuildSnapshotRefusesInvalid(t *testing.T) {
	tests := []struct {
		name string
		res  map[string][]types.Resource
	}{
		{"empty name", map[string][]types.Resource{resource.SecretType: {bundleSecret("", "x")}}},
		{"duplicate name", map[string][]types.Resource{resource.SecretType: {bundleSecret("a", "x"), bundleSecret("a", "y")}}},
		{"fails proto validation", map[string][]types.Resource{resource.SecretType: {&tlsv3.Secret{Name: "a", Type: &tlsv3.Secret_TlsCertificate{
			TlsCertificate: &tlsv3.TlsCertificate{CertificateChain: &core.DataSource{}}}}}}},
		{"unknown type", map[string][]types.Resource{"type.googleapis.com/nope": {bundleSecret("a", "x")}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := buildSnapshot(tt.res, &digests{}); !errors.Is(err, errInvalidResource) {
				t.Fatalf("err = %v, want errInvalidResource", err)
			}
		})
	}
}
