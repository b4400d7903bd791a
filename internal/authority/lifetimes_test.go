package authority_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/rotation"
)

var t0 = time.Date(2026, 11, 25, 12, 0, 0, 0, time.UTC)

func TestDefaults(t *testing.T) {
	d := authority.Default()
	if err := d.Validate(); err != nil {
		t.Fatalf("Default() does not validate: %v", err)
	}
	tests := []struct {
		name      string
		got, want any
	}{
		{"leaf", d.Leaf, time.Hour},
		{"node", d.Node, 24 * time.Hour},
		{"server", d.Server, 24 * time.Hour},
		{"server renewal", d.ServerRenewFraction, 0.5},
		{"join token", d.JoinToken, time.Hour},
		{"root", d.Root, 87600 * time.Hour},
		{"intermediate", d.Intermediate, 8760 * time.Hour},
		{"auto-rotation", d.AutoRotate, 0.8},
		{"backdate", d.Backdate, time.Minute},
		{"renewal fraction", d.RenewFraction, 0.5},
		{"renewal jitter", d.RenewJitter, 0.1},
		// The signing library's own bounds and fallbacks are these rules.
		{"ca.MinTTL", ca.MinTTL, authority.LeafTTL.Min},
		{"ca.MaxTTL", ca.MaxTTL, authority.LeafTTL.Max},
		{"ca.DefaultBackdate", ca.DefaultBackdate, d.Backdate},
		{"rotation.DefaultFraction", rotation.DefaultFraction, d.RenewFraction},
		{"rotation.DefaultJitter", rotation.DefaultJitter, d.RenewJitter},
		{"zero Lifetimes", authority.Lifetimes{}.OrDefault(), d},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Fatalf("got %v, want %v", tt.got, tt.want)
			}
		})
	}
}

// The embedded configuration is Default, and a configuration's keys reach
// its Lifetimes.
func TestConfigBuildsLifetimes(t *testing.T) {
	got, err := config.Default().Lifetimes()
	if err != nil {
		t.Fatal(err)
	}
	if got != authority.Default() {
		t.Fatalf("config.Default().Lifetimes() = %+v, want authority.Default() %+v", got, authority.Default())
	}
	cfg, err := config.Parse([]byte("ca: {default_leaf_ttl: 2h, root_ttl: 48h, intermediate_ttl: 24h}\n" +
		"xds: {join_token_ttl: 10m, node_cert_ttl: 6h}\nrotation: {fraction: 0.6, jitter: 0}\n"))
	if err != nil {
		t.Fatal(err)
	}
	got, err = cfg.Lifetimes()
	if err != nil {
		t.Fatal(err)
	}
	want := authority.Default()
	want.Leaf, want.Root, want.Intermediate, want.JoinToken, want.Node = 2*time.Hour, 48*time.Hour, 24*time.Hour, 10*time.Minute, 6*time.Hour
	want.RenewFraction, want.RenewJitter = 0.6, 0
	if got != want {
		t.Fatalf("Lifetimes() = %+v, want %+v", got, want)
	}
	cfg.CA.DefaultLeafTTL = config.Duration(time.Minute)
	if _, err := cfg.Lifetimes(); !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "1m0s is out of range 5m0s to 720h0m0s") {
		t.Fatalf("Lifetimes() of an out-of-range leaf TTL: %v", err)
	}
}

func TestRanges(t *testing.T) {
	tests := []struct {
		name string
		r    authority.Range
		d    time.Duration
		want string // "" when allowed
	}{
		{"leaf minimum", authority.LeafTTL, 5 * time.Minute, ""},
		{"leaf maximum", authority.LeafTTL, 720 * time.Hour, ""},
		{"leaf just short", authority.LeafTTL, 5*time.Minute - time.Second, "4m59s is out of range 5m0s to 720h0m0s"},
		{"leaf just long", authority.LeafTTL, 720*time.Hour + time.Second, "720h0m1s is out of range 5m0s to 720h0m0s"},
		{"leaf zero", authority.LeafTTL, 0, "0s is out of range 5m0s to 720h0m0s"},
		{"leaf negative", authority.LeafTTL, -time.Hour, "-1h0m0s is out of range 5m0s to 720h0m0s"},
		{"join token minimum", authority.JoinTokenTTL, time.Minute, ""},
		{"join token short", authority.JoinTokenTTL, 59 * time.Second, "59s is out of range 1m0s to 720h0m0s"},
		{"root minimum", authority.RootTTL, 24 * time.Hour, ""},
		{"root short", authority.RootTTL, 23 * time.Hour, "23h0m0s is too short: at least 24h0m0s"},
		{"root has no maximum", authority.RootTTL, 100 * 8760 * time.Hour, ""},
		{"intermediate short", authority.IntermediateTTL, 59 * time.Minute, "59m0s is too short: at least 1h0m0s"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Check(tt.d)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("Check(%s) = %v, want nil", tt.d, err)
			case tt.want != "" && (err == nil || err.Error() != tt.want):
				t.Fatalf("Check(%s) = %v, want %q", tt.d, err, tt.want)
			}
		})
	}
	// CheckLeafTTL is the same check, as a ca.ErrTTL.
	err := authority.CheckLeafTTL(time.Minute)
	if !errors.Is(err, ca.ErrTTL) || !strings.HasSuffix(err.Error(), authority.LeafTTL.Check(time.Minute).Error()) {
		t.Fatalf("CheckLeafTTL(1m) = %v", err)
	}
}

func TestValidateNamesEachProblem(t *testing.T) {
	tests := []struct {
		name string
		edit func(*authority.Lifetimes)
		want string
	}{
		{"leaf", func(l *authority.Lifetimes) { l.Leaf = time.Minute }, "Leaf: invalid certificate TTL: 1m0s is out of range"},
		{"node", func(l *authority.Lifetimes) { l.Node = 721 * time.Hour }, "Node: invalid certificate TTL: 721h0m0s is out of range"},
		{"server", func(l *authority.Lifetimes) { l.Server = 0 }, "Server: invalid certificate TTL: 0s is out of range"},
		{"join token", func(l *authority.Lifetimes) { l.JoinToken = time.Second }, "JoinToken: 1s is out of range 1m0s"},
		{"root", func(l *authority.Lifetimes) { l.Root, l.Intermediate = 23*time.Hour, 2*time.Hour }, "Root: 23h0m0s is too short: at least 24h0m0s"},
		{"intermediate not shorter than root", func(l *authority.Lifetimes) { l.Intermediate = l.Root }, "Intermediate: 87600h0m0s must be shorter than the root's 87600h0m0s"},
		{"fraction", func(l *authority.Lifetimes) { l.RenewFraction = 0.95 }, "RenewFraction: 0.95 is out of range: 0.1 to 0.9"},
		{"jitter at the fraction", func(l *authority.Lifetimes) { l.RenewJitter = l.RenewFraction }, "RenewJitter: 0.5 is out of range: 0 up to the renewal fraction (0.5)"},
		{"negative jitter", func(l *authority.Lifetimes) { l.RenewJitter = -0.1 }, "RenewJitter: -0.1 is out of range"},
		{"auto-rotation", func(l *authority.Lifetimes) { l.AutoRotate = 1 }, "AutoRotate: 1 is out of range"},
		{"backdate", func(l *authority.Lifetimes) { l.Backdate = -time.Second }, "Backdate: -1s is out of range"},
		{"backdate as long as the shortest leaf", func(l *authority.Lifetimes) { l.Backdate = 5 * time.Minute }, "Backdate: 5m0s is out of range"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := authority.Default()
			tt.edit(&l)
			err := l.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want it to contain %q", err, tt.want)
			}
			if n := strings.Count(err.Error(), "\n") + 1; n != 1 {
				t.Fatalf("Validate() names %d problems for one: %v", n, err)
			}
		})
	}
}

func TestWindowBackdateAndCap(t *testing.T) {
	l := authority.Default()
	tests := []struct {
		name           string
		now            time.Time
		ttl            time.Duration
		issuerNotAfter time.Time
		wantNB, wantNA time.Time
	}{
		{"backdated a minute", t0, time.Hour, t0.Add(8760 * time.Hour), t0.Add(-time.Minute), t0.Add(59 * time.Minute)},
		{"to the second", t0.Add(1500 * time.Millisecond), time.Hour, t0.Add(8760 * time.Hour), t0.Add(-59 * time.Second), t0.Add(time.Hour - 59*time.Second)},
		{"capped at the issuer", t0, 24 * time.Hour, t0.Add(2 * time.Hour), t0.Add(-time.Minute), t0.Add(2 * time.Hour)},
		{"ends exactly with the issuer", t0, time.Hour, t0.Add(59 * time.Minute), t0.Add(-time.Minute), t0.Add(59 * time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			nb, na := l.Window(tt.now, tt.ttl, tt.issuerNotAfter)
			if !nb.Equal(tt.wantNB) || !na.Equal(tt.wantNA) {
				t.Fatalf("Window = %s..%s, want %s..%s", nb, na, tt.wantNB, tt.wantNA)
			}
		})
	}
}

// The CA signs exactly the window Lifetimes describes, given its Backdate,
// and a CA generated with Lifetimes' root and intermediate lifetimes and
// backdate has them.
func TestCASignsTheWindow(t *testing.T) {
	td, err := identity.TrustDomain("mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.ID(td, "web")
	if err != nil {
		t.Fatal(err)
	}
	for _, backdate := range []time.Duration{time.Minute, 3 * time.Minute} {
		l := authority.Default()
		l.Backdate = backdate
		l.Intermediate = 48 * time.Hour
		m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, RootTTL: l.Root, IntermediateTTL: l.Intermediate, Backdate: l.Backdate, Now: t0})
		if err != nil {
			t.Fatal(err)
		}
		if want := t0.Add(-l.Backdate); !m.Roots[0].NotBefore.Equal(want) || !m.Issuer.NotBefore.Equal(want) {
			t.Fatalf("CA certificates from %s and %s, want %s", m.Roots[0].NotBefore, m.Issuer.NotBefore, want)
		}
		if got := m.Issuer.NotAfter.Sub(m.Issuer.NotBefore); got != l.Intermediate {
			t.Fatalf("intermediate lives %s, want %s", got, l.Intermediate)
		}
		if got := m.Roots[0].NotAfter.Sub(m.Roots[0].NotBefore); got != l.Root {
			t.Fatalf("root lives %s, want %s", got, l.Root)
		}
		clk := clock.NewFake(t0.Add(90 * time.Second))
		c, err := ca.New(ca.Config{TrustDomain: td, Material: m, Backdate: l.Backdate, Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		for _, ttl := range []time.Duration{l.Leaf, 24 * time.Hour, authority.LeafTTL.Max} {
			t.Run(fmt.Sprintf("backdate %s ttl %s", backdate, ttl), func(t *testing.T) {
				is, err := c.Issue(context.Background(), ca.Request{ID: id, TTL: ttl})
				if err != nil {
					t.Fatal(err)
				}
				nb, na := l.Window(clk.Now(), ttl, m.Issuer.NotAfter)
				if !is.Cert.NotBefore.Equal(nb) || !is.Cert.NotAfter.Equal(na) {
					t.Fatalf("signed %s..%s, Lifetimes say %s..%s", is.Cert.NotBefore, is.Cert.NotAfter, nb, na)
				}
				t.Logf("ttl %s: %s..%s (issuer until %s)", ttl, nb.Format(time.RFC3339), na.Format(time.RFC3339), m.Issuer.NotAfter.Format(time.RFC3339))
			})
		}
	}
}

// Renewal happens within [Fraction-Jitter, Fraction] of the lifetime, at a
// point fixed by the serial; with no jitter exactly at Fraction. The
// certificate is not due a second before its point on the clock, and due
// at it.
func TestRenewalWithJitter(t *testing.T) {
	life := 24 * time.Hour
	nb, na := t0, t0.Add(life)
	tests := []struct {
		name             string
		fraction, jitter float64
	}{
		{"defaults", 0.5, 0.1},
		{"no jitter", 0.5, 0},
		{"two thirds, 5%", 2.0 / 3, 0.05},
		{"late", 0.9, 0.3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := authority.Default()
			l.RenewFraction, l.RenewJitter = tt.fraction, tt.jitter
			if err := l.Validate(); err != nil {
				t.Fatal(err)
			}
			p := l.Renewal()
			lo := nb.Add(time.Duration(float64(life) * (tt.fraction - tt.jitter)))
			hi := nb.Add(time.Duration(float64(life) * tt.fraction))
			first, last := hi, lo
			for i := range 500 {
				serial := fmt.Sprintf("%x", 1_000_003*(i+1))
				at := p.RenewAt(nb, na, serial)
				if at.Before(lo) || at.After(hi) {
					t.Fatalf("serial %s renews at %s, outside %s..%s", serial, at, lo, hi)
				}
				if at.Before(first) {
					first = at
				}
				if at.After(last) {
					last = at
				}
				clk := clock.NewFake(at.Add(-time.Second))
				if p.Due(clk.Now(), nb, na, serial) {
					t.Fatalf("serial %s due at %s, before its point %s", serial, clk.Now(), at)
				}
				clk.Set(at)
				if !p.Due(clk.Now(), nb, na, serial) {
					t.Fatalf("serial %s not due at its point %s", serial, at)
				}
			}
			spread := last.Sub(first)
			if tt.jitter == 0 && spread != 0 || tt.jitter > 0 && spread < time.Duration(0.9*tt.jitter*float64(life)) {
				t.Fatalf("renewals spread over %s with jitter %v", spread, tt.jitter)
			}
			t.Logf("fraction %v jitter %v: renewals %s..%s after issue", tt.fraction, tt.jitter, first.Sub(nb), last.Sub(nb))
		})
	}
	// Callers without a configuration (rotation.Policy{}) renew like the
	// default configuration.
	for i := range 50 {
		serial := fmt.Sprintf("%x", i)
		if a, b := authority.Default().Renewal().RenewAt(nb, na, serial), (rotation.Policy{}).RenewAt(nb, na, serial); !a.Equal(b) {
			t.Fatalf("serial %s: default renews at %s, zero rotation.Policy at %s", serial, a, b)
		}
	}
}

func TestServerRenewalAndAutoRotation(t *testing.T) {
	l := authority.Default()
	nb := t0
	na := nb.Add(l.Server)
	clk := clock.NewFake(nb.Add(l.Server/2 - time.Second))
	if l.ServerRenewDue(clk.Now(), nb, na) {
		t.Fatal("server certificate due before half its lifetime")
	}
	clk.Set(nb.Add(l.Server / 2))
	if !l.ServerRenewDue(clk.Now(), nb, na) {
		t.Fatal("server certificate not due at half its lifetime")
	}
	inA := nb.Add(l.Intermediate)
	if got, want := l.AutoRotateAt(nb, inA), nb.Add(l.Intermediate*8/10); !got.Equal(want) {
		t.Fatalf("AutoRotateAt = %s, want %s (80%% of the intermediate's lifetime)", got, want)
	}
}

// ca.Generate's fallbacks for zero lifetimes, and the backdate of the CA
// certificates it makes, are Default's.
func TestCAFallbacksAreDefaults(t *testing.T) {
	td, err := identity.TrustDomain("mesh.local")
	if err != nil {
		t.Fatal(err)
	}
	d := authority.Default()
	now := t0.Add(1500 * time.Millisecond)
	m, err := ca.Generate(ca.GenerateOptions{TrustDomain: td, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	wantNB := now.Add(-d.Backdate).Truncate(time.Second)
	for _, c := range []struct {
		name string
		nb   time.Time
		life time.Duration
		want time.Duration
	}{
		{"root", m.Roots[0].NotBefore, m.Roots[0].NotAfter.Sub(m.Roots[0].NotBefore), d.Root},
		{"intermediate", m.Issuer.NotBefore, m.Issuer.NotAfter.Sub(m.Issuer.NotBefore), d.Intermediate},
	} {
		if c.life != c.want || !c.nb.Equal(wantNB) {
			t.Errorf("%s from %s lives %s, want from %s for %s", c.name, c.nb, c.life, wantNB, c.want)
		}
	}
}
