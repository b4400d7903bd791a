package authority_test

import (
	"context"
	"crypto/x509"
	"slices"
	"testing"

	"github.com/meshca/meshca/internal/clock"
)

// TestLoadedIssuingCAsFollowRotation: LoadedIssuingCAs names the same CAs
// as IssuingCAs reads from the store, before, during and after an
// intermediate rotation this authority made.
func TestLoadedIssuingCAsFollowRotation(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRig(t, st, clock.NewFake(t0))
	same := func(step string, want int) {
		t.Helper()
		serials := func(cs []*x509.Certificate) []string {
			var out []string
			for _, c := range cs {
				out = append(out, serialHex(c))
			}
			slices.Sort(out)
			return out
		}
		loaded, read := serials(r.Authority.LoadedIssuingCAs()), serials(r.Authority.IssuingCAs())
		if !slices.Equal(loaded, read) || len(loaded) != want {
			t.Fatalf("%s: LoadedIssuingCAs %v, IssuingCAs %v; want the same %d", step, loaded, read, want)
		}
	}
	same("before the rotation", 1)
	if err := r.StartRotation(ctx, false, "test"); err != nil {
		t.Fatal(err)
	}
	same("during the rotation (new and previous issuer)", 2)
	if phase, err := r.AdvanceRotation(ctx, acks(0, 0)); err != nil || phase != "" {
		t.Fatalf("rotation not done: %q %v", phase, err)
	}
	same("after the rotation", 1)
}
