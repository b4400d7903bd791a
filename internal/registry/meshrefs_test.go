package registry

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/mesh"
)

// TestApplyMeshRefusesMissingAndRevokedIdentities applies the HTTPS demo
// before its identities exist, then with one of them revoked: each
// reference is refused by its field path and nothing is stored.
func TestApplyMeshRefusesMissingAndRevokedIdentities(t *testing.T) {
	ctx := context.Background()
	r := newRegistry(t, openStore(t, dataDir(t)), clock.NewFake(t0))
	doc, err := os.ReadFile(filepath.Join("..", "..", "testdata", "mesh", "examples", "https-front-proxy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	problems := func(err error) []string {
		t.Helper()
		var ve *mesh.ValidationError
		if !errors.As(err, &ve) {
			t.Fatalf("apply: %v, want a *mesh.ValidationError", err)
		}
		var out []string
		for _, p := range ve.Problems {
			out = append(out, p.String())
		}
		return out
	}
	for _, id := range []string{"front", "echo"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: id}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	_, err = r.ApplyMesh(ctx, doc, false, "test")
	want := []string{
		`services[1].identity: identity "billing" does not exist: create it first (meshca identity add billing)`,
		`front_proxy.https.allowed_spiffe_ids[0].exact: identity "ops" does not exist: create it first (meshca identity add ops)`,
		`sidecars[0].allowed_spiffe_ids[0].exact: identity "front" is revoked: name another identity or add a new one`,
	}
	got := problems(err)
	t.Logf("missing billing and ops: %q", got)
	if !slices.Equal(got, want[:2]) {
		t.Fatalf("problems %q, want %q", got, want[:2])
	}
	if r.Mesh() != nil {
		t.Fatal("a refused mesh is in use")
	}
	// Dry runs check too.
	if _, err := r.ApplyMesh(ctx, doc, true, "test"); !slices.Equal(problems(err), want[:2]) {
		t.Fatalf("dry run: %v", err)
	}
	for _, id := range []string{"billing", "ops"} {
		if _, err := r.AddIdentity(ctx, AddIdentity{Name: id}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := r.RevokeIdentity(ctx, "front", "key compromise", "test"); err != nil {
		t.Fatal(err)
	}
	got = problems(func() error { _, err := r.ApplyMesh(ctx, doc, false, "test"); return err }())
	t.Logf("front revoked: %q", got)
	if len(got) != 2 || got[0] != `front_proxy.identity: identity "front" is revoked: name another identity or add a new one` || got[1] != want[2] {
		t.Fatalf("problems %q", got)
	}
	if r.Mesh() != nil {
		t.Fatal("a refused mesh is in use")
	}
}
