package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

var benchRound atomic.Int64

// BenchmarkDurableIssuanceVsCeiling measures, in one run, durable issuance
// (server-generated P-256 key, cfssl sign, lint gate, sealed key, fsync'd
// group commit, audit) with 32 callers per core, and the raw ceiling:
// P-256 keygen + x509.CreateCertificate on every core, no lint, no storage.
// It reports both rates and their ratio (goal in issue 7: ≥ 0.4).
func BenchmarkDurableIssuanceVsCeiling(b *testing.B) {
	ctx := context.Background()
	st := openStore(b, dataDir(b))
	r := newRegistry(b, st, clock.Real{})
	workers := 32 * runtime.GOMAXPROCS(0)

	run := func(n int, op func(i int) error) float64 {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for w := 0; w < workers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1))
					if i > n {
						return
					}
					if err := op(i); err != nil {
						b.Error(err)
						return
					}
				}
			}()
		}
		wg.Wait()
		return float64(n) / time.Since(start).Seconds()
	}

	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ceiling"}, NotBefore: time.Now(),
		NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	ceilingOp := func(i int) error {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(int64(i) + 2), NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour),
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
		_, err = x509.CreateCertificate(rand.Reader, tmpl, caCert, key.Public(), caKey)
		return err
	}
	b.ResetTimer()
	ceiling := run(b.N, ceilingOp)
	round := benchRound.Add(1) // the framework calls the benchmark more than once
	durable := run(b.N, func(i int) error {
		_, err := r.AddIdentity(ctx, AddIdentity{Name: fmt.Sprintf("bench-%d-%d", round, i)}, "bench")
		return err
	})
	b.StopTimer()
	b.ReportMetric(ceiling, "ceiling_certs/s")
	b.ReportMetric(durable, "durable_certs/s")
	b.ReportMetric(durable/ceiling, "ratio")
}
