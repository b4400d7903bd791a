package ca

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cloudflare/cfssl/csr"
	"github.com/cloudflare/cfssl/signer"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	zx509 "github.com/zmap/zcrypto/x509"
	"github.com/zmap/zlint/v3"
	"github.com/zmap/zlint/v3/lint"

	"github.com/meshca/meshca/internal/clock"
)

// TestLintGateRunsEveryLint checks that the gate built once runs every
// certificate lint of its sources, and no other, and fails exactly the
// certificates zlint.LintCertificateEx fails on the same registry, with
// the same lints named.
func TestLintGateRunsEveryLint(t *testing.T) {
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lintSources})
	if err != nil {
		t.Fatal(err)
	}
	l, err := lintGateLints()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, cl := range l.lints {
		got = append(got, cl.Name)
		if !slices.Contains(lintSources, cl.Source) {
			t.Errorf("lint %s is of source %s, not one of the gate's", cl.Name, cl.Source)
		}
	}
	slices.Sort(got)
	if want := reg.CertificateLints().Names(); !slices.Equal(got, want) {
		t.Fatalf("gate runs %d lints, the registry has %d", len(got), len(want))
	}
	t.Logf("lint gate: %d certificate lints", len(got))

	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	now := time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)
	m, err := Generate(GenerateOptions{TrustDomain: td, KeyAlgorithm: ECDSAP256, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	c, err := New(Config{TrustDomain: td, Material: m, Clock: clock.NewFake(now)})
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name      string
		cn        string
		hosts     []string
		wantFails bool
	}{
		{name: "good", cn: "web", hosts: []string{"spiffe://mesh.local/web", "web.example"}},
		{name: "long CN", cn: strings.Repeat("c", 100), hosts: []string{"spiffe://mesh.local/web"}, wantFails: true},
		{name: "bad DNS label", cn: "web", hosts: []string{"spiffe://mesh.local/web", "-bad-.example"}, wantFails: true},
		{name: "long CN and bad label", cn: strings.Repeat("c", 100), hosts: []string{"spiffe://mesh.local/web", "-bad-.example"}, wantFails: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			serial, err := newSerial()
			if err != nil {
				t.Fatal(err)
			}
			// Signed without the gate, to lint it both ways.
			cert, err := c.real.sign(signer.SignRequest{
				Hosts:   tt.hosts,
				Subject: &signer.Subject{CN: tt.cn, Names: []csr.Name{{O: "mesh.local"}}},
				Profile: profileECDSA, Serial: serial,
				NotBefore: now.Add(-time.Minute), NotAfter: now.Add(time.Hour),
			}, key.Public())
			if err != nil {
				t.Fatal(err)
			}
			zc, err := zx509.ParseCertificate(cert.Raw)
			if err != nil {
				t.Fatal(err)
			}
			var want []string
			for name, r := range zlint.LintCertificateEx(zc, reg).Results {
				if r.Status >= lint.Warn {
					want = append(want, name)
				}
			}
			slices.Sort(want)
			gotFailed := l.failed(zc)
			slices.Sort(gotFailed)
			if !slices.Equal(gotFailed, want) {
				t.Fatalf("gate failed %v, zlint %v", gotFailed, want)
			}
			if (len(want) > 0) != tt.wantFails {
				t.Fatalf("failed lints %v, want failures: %v", want, tt.wantFails)
			}
			// What LintBeforeSigning compares the real signature's
			// certificate with: the very to-be-signed bytes Go's parser
			// finds, and nothing for a refused certificate.
			tbs, err := lintTBS(cert.Raw)
			if (err != nil) != tt.wantFails || (err == nil) != bytes.Equal(tbs, cert.RawTBSCertificate) {
				t.Fatalf("lintTBS: %v; to-be-signed bytes equal Go's: %v", err, bytes.Equal(tbs, cert.RawTBSCertificate))
			}
		})
	}
}

// BenchmarkLintDER measures the lint gate alone on a typical leaf, beside
// the same lints run through zlint.LintCertificateEx (the gate's way before
// it kept its lints): what issuance pays for zlint per certificate.
// cpu-ns/op is the process's CPU time per certificate, steadier than ns/op
// on a shared machine.
func BenchmarkLintDER(b *testing.B) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	now := time.Now()
	m, err := Generate(GenerateOptions{TrustDomain: td, KeyAlgorithm: ECDSAP256, Now: now})
	if err != nil {
		b.Fatal(err)
	}
	c, err := New(Config{TrustDomain: td, Material: m, Clock: clock.NewFake(now)})
	if err != nil {
		b.Fatal(err)
	}
	is, err := c.Issue(context.Background(), Request{ID: spiffeid.RequireFromPath(td, "/bench"), DNSNames: []string{"bench.example"}, TTL: time.Hour})
	if err != nil {
		b.Fatal(err)
	}
	reg, err := lint.GlobalRegistry().Filter(lint.FilterOptions{IncludeSources: lintSources})
	if err != nil {
		b.Fatal(err)
	}
	run := func(b *testing.B, lintOne func() error) {
		b.ReportAllocs()
		start := cpuTime(b)
		for b.Loop() {
			if err := lintOne(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
	}
	b.Run("gate", func(b *testing.B) { run(b, func() error { return lintDER(is.DER) }) })
	b.Run("LintCertificateEx", func(b *testing.B) {
		run(b, func() error {
			zc, err := zx509.ParseCertificate(is.DER)
			if err != nil {
				return err
			}
			for name, r := range zlint.LintCertificateEx(zc, reg).Results {
				if r.Status >= lint.Warn {
					return &LintError{Lints: []string{name}}
				}
			}
			return nil
		})
	})
}

// cpuTime is the CPU time, user and system, the process has used.
func cpuTime(tb testing.TB) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		tb.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkIssueLintBeforeSigning is BenchmarkIssue with the copy signed
// by a throwaway issuer linted before the real key signs.
func BenchmarkIssueLintBeforeSigning(b *testing.B) {
	td := spiffeid.RequireTrustDomainFromString("mesh.local")
	m, err := Generate(GenerateOptions{TrustDomain: td, KeyAlgorithm: ECDSAP256, Now: time.Now()})
	if err != nil {
		b.Fatal(err)
	}
	c, err := New(Config{TrustDomain: td, Material: m, LintBeforeSigning: true})
	if err != nil {
		b.Fatal(err)
	}
	id := spiffeid.RequireFromPath(td, "/bench")
	b.ReportAllocs()
	start := cpuTime(b)
	for b.Loop() {
		if _, err := c.Issue(context.Background(), Request{ID: id, TTL: time.Hour}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}
