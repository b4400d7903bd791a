package app

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/rotation"
)

// TestRenewalListFollowsTheFeed: the rotation loop's list of certificates,
// read once and then kept from the change feed, equals a fresh listing
// after adds, re-keys, revocations and admin identities, and a round with
// nothing committed since the last reads nothing.
func TestRenewalListFollowsTheFeed(t *testing.T) {
	ctx := context.Background()
	st, _, _, auth, reg := openParts(t)
	ren := &renewals{reg: reg, auth: auth, st: st}
	fresh := func() []rotation.Cert {
		t.Helper()
		ids, err := reg.Identities(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var out []rotation.Cert
		for _, s := range ids {
			if s.Identity.State == store.StateActive && s.Cert != nil {
				out = append(out, rotation.Cert{Name: s.Identity.Name, Serial: s.Cert.Serial, NotBefore: s.Cert.NotBefore, NotAfter: s.Cert.NotAfter})
			}
		}
		return out
	}
	check := func(step string) {
		t.Helper()
		got, err := ren.Certs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		want := fresh()
		byName := func(a, b rotation.Cert) int { return strings.Compare(a.Name, b.Name) }
		slices.SortFunc(got, byName)
		slices.SortFunc(want, byName)
		if !slices.EqualFunc(got, want, func(a, b rotation.Cert) bool {
			return a.Name == b.Name && a.Serial == b.Serial && a.NotBefore.Equal(b.NotBefore) && a.NotAfter.Equal(b.NotAfter) && !a.Stale
		}) {
			t.Fatalf("%s: the kept list has %d certificates, a fresh listing %d:\n%v\n%v", step, len(got), len(want), got, want)
		}
	}
	for i := range 5 {
		if _, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: fmt.Sprintf("svc-%d", i)}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	check("after 5 adds")
	if ren.certs == nil || len(ren.certs) != 5 {
		t.Fatalf("kept %d certificates", len(ren.certs))
	}
	if _, err := reg.ReissueIdentity(ctx, "svc-1", "test"); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: "svc-5"}, "test"); err != nil {
		t.Fatal(err)
	}
	check("after a re-key and an add")
	if _, err := reg.RevokeIdentity(ctx, "svc-2", "test", "test"); err != nil {
		t.Fatal(err)
	}
	check("after a revocation")
	if _, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: "ops", Admin: true}, "test"); err != nil {
		t.Fatal(err)
	}
	check("after an admin identity")
	// A kept entry the store does not know shows that a round with
	// nothing committed reads nothing.
	ren.mu.Lock()
	ren.certs["marker"] = renewalCert{cert: rotation.Cert{Name: "marker"}}
	ren.mu.Unlock()
	got, err := ren.Certs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(got, func(c rotation.Cert) bool { return c.Name == "marker" }) {
		t.Fatal("a round with nothing committed read the identities again")
	}
}
