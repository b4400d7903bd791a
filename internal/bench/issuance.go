package bench

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/meshca/meshca/internal/registry"
)

// rate is a throughput measured with the process's CPU time.
type rate struct {
	perSec float64
	cpu    time.Duration // process CPU (user+system) per operation
	util   float64       // process CPU / wall, in cores
}

// measure runs op(0..n-1) on callers goroutines and returns the rate.
func measure(ctx context.Context, n, callers int, op func(i int) error) (rate, error) {
	cpu0 := processCPU()
	start := time.Now()
	err := parallel(ctx, n, callers, op)
	wall := time.Since(start)
	cpu := processCPU() - cpu0
	if err != nil {
		return rate{}, err
	}
	return rate{perSec: float64(n) / wall.Seconds(), cpu: cpu / time.Duration(n), util: cpu.Seconds() / wall.Seconds()}, nil
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// ceilingIssuer is the least work a certificate needs: a P-256 key and
// x509.CreateCertificate, no lint, no storage.
type ceilingIssuer struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newCeilingIssuer() (*ceilingIssuer, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ceiling"}, NotBefore: now,
		NotAfter: now.Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &ceilingIssuer{key: key, cert: cert}, nil
}

func (c *ceilingIssuer) issue(i int) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i) + 2), NotBefore: now, NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	_, err = x509.CreateCertificate(rand.Reader, tmpl, c.cert, key.Public(), c.key)
	return err
}

// runIssuance measures durable in-process issuance (AddIdentity: server
// key, cfssl policy and signature, lint gate, sealed key, fsync'd group
// commit with its audit records) against the raw ceiling, at 1, 8 and 64
// callers, on a real bbolt file in the work directory.
func runIssuance(ctx context.Context, env *Env) (*Report, error) {
	n, nCeiling := 6000, 20000
	if env.Quick {
		n, nCeiling = 40, 200
	}
	ceil, err := newCeilingIssuer()
	if err != nil {
		return nil, err
	}
	ceiling, err := measure(ctx, nCeiling, 4*runtime.GOMAXPROCS(0), ceil.issue)
	if err != nil {
		return nil, fmt.Errorf("ceiling: %w", err)
	}
	env.Logf("ceiling: %.0f certs/s, %s CPU each", ceiling.perSec, ceiling.cpu)

	durable := func(name string, callers, n int, lintFirst bool) (rate, error) {
		reg, _, closeStore, err := openRegistry(ctx, filepath.Join(env.Dir, name), lintFirst, EtcdTarget{})
		if err != nil {
			return rate{}, err
		}
		defer closeStore()
		r, err := measure(ctx, n, callers, func(i int) error {
			_, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: fmt.Sprintf("bench-%d", i)}, "bench")
			return err
		})
		if err != nil {
			return rate{}, fmt.Errorf("%s: %w", name, err)
		}
		env.Logf("%s: %.0f certs/s, %s CPU each, %.2f cores busy", name, r.perSec, r.cpu, r.util)
		return r, nil
	}

	rep := &Report{Intro: "Durable issuance is `registry.AddIdentity` in-process, as the admin API calls it: a server-generated P-256 key, " +
		"meshca's cfssl policy and signature, the zlint gate, the key sealed with AES-GCM, and the identity, certificate and two audit records " +
		"in one fsync'd bbolt group commit on a real file. The ceiling is the least work a certificate needs: P-256 keygen + " +
		"x509.CreateCertificate on every core, no lint, no storage, measured first in the same run. CPU figures are the process's " +
		"user+system time per certificate."}
	var best rate
	for _, callers := range []int{1, 8, 64} {
		count := n
		if callers == 1 {
			count = n / 6
		}
		r, err := durable(fmt.Sprintf("callers-%d", callers), callers, count, false)
		if err != nil {
			return nil, err
		}
		row := Row{
			Figure: fmt.Sprintf("durable issuance, %s", plural(callers, "caller")), Value: certsPerSec(r),
			Baseline: certsPerSec(ceiling), Ratio: r.perSec / ceiling.perSec,
		}
		if callers == 64 {
			row.Goal, row.Verdict = "≥ 0.40×", Judge(row.Ratio >= 0.4)
			best = r
		}
		rep.Rows = append(rep.Rows, row)
	}
	strict, err := durable("lint-before-signing", 64, n/2, true)
	if err != nil {
		return nil, err
	}
	rep.Rows = append(rep.Rows,
		Row{Figure: "durable issuance, 64 callers, `ca.lint_before_signing: true`", Value: certsPerSec(strict),
			Baseline: certsPerSec(ceiling), Ratio: strict.perSec / ceiling.perSec},
		Row{Figure: "CPU per certificate, 64 callers (ceiling in baseline)", Value: micros(best.cpu), Baseline: micros(ceiling.cpu),
			Ratio: float64(best.cpu) / float64(ceiling.cpu)},
		Row{Figure: "cores busy, 64 callers (ceiling in baseline)", Value: fmt.Sprintf("%.2f of %d", best.util, runtime.GOMAXPROCS(0)),
			Baseline: fmt.Sprintf("%.2f", ceiling.util)},
	)
	return rep, nil
}

func certsPerSec(r rate) string { return fmt.Sprintf("%.0f certs/s", r.perSec) }

func micros(d time.Duration) string {
	return fmt.Sprintf("%.0f µs", float64(d)/float64(time.Microsecond))
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
