package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

// BenchmarkAgentSignVsServerKey measures, in one run, durable issuance of
// an identity's certificate on the two paths: server-generated (P-256 key
// made by meshca, cfssl sign, lint, sealed key, fsync'd group commit,
// audit: ReissueIdentity) and agent (CSR parsed and its signature checked,
// node and assignment checked, cfssl sign, lint, node record and
// certificate committed, audit: SignCSR), with 32 callers per core. The
// agents' CSRs are made before the clock starts: that is the node's work.
// It reports both rates and their ratio (goal: agent ≥ 1× server-key).
func BenchmarkAgentSignVsServerKey(b *testing.B) {
	ctx := context.Background()
	st := openStore(b, dataDir(b))
	r := newRegistry(b, st, clock.Real{})
	if _, err := r.AddIdentity(ctx, AddIdentity{Name: "web"}, "bench"); err != nil {
		b.Fatal(err)
	}
	// Enough agent nodes that none reaches its CSR limit.
	perNode := SignBurst + SignPerIdentity
	type holder struct {
		name string
		cert *x509.Certificate
	}
	round := benchRound.Add(1)
	holders := make([]holder, b.N/perNode+1)
	for i := range holders {
		name := fmt.Sprintf("agent-%d-%d", round, i)
		_, tok, err := r.AddNode(ctx, AddNode{Name: name, Identities: []string{"web"}, Agent: true}, "bench")
		if err != nil {
			b.Fatal(err)
		}
		j, err := r.Join(ctx, name, tok.Token, benchCSR(b), "bench")
		if err != nil {
			b.Fatal(err)
		}
		blk, _ := pem.Decode(j.ChainPEM)
		cert, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			b.Fatal(err)
		}
		holders[i] = holder{name: name, cert: cert}
	}
	csrs := make([][]byte, b.N)
	for i := range csrs {
		csrs[i] = benchCSR(b)
	}
	workers := 32 * runtime.GOMAXPROCS(0)
	run := func(n int, op func(i int) error) float64 {
		var next atomic.Int64
		var wg sync.WaitGroup
		start := time.Now()
		for range workers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					i := int(next.Add(1)) - 1
					if i >= n {
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
	b.ResetTimer()
	// Agent first: each path runs on a store the other has grown, so
	// the one measured second is not the only one to pay for a bigger file.
	agent := run(b.N, func(i int) error {
		h := holders[i/perNode]
		_, err := r.SignCSR(ctx, h.name, h.cert, "web", csrs[i])
		return err
	})
	serverKey := run(b.N, func(int) error {
		_, err := r.ReissueIdentity(ctx, "web", "bench")
		return err
	})
	b.StopTimer()
	b.ReportMetric(serverKey, "server_key_certs/s")
	b.ReportMetric(agent, "agent_csr_certs/s")
	b.ReportMetric(agent/serverKey, "ratio")
}

func benchCSR(b *testing.B) []byte {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		b.Fatal(err)
	}
	return der
}
