package registry

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

// BenchmarkAgentSignVsServerKey measures, in one run, durable issuance of
// an identity's certificate on the two paths: server-generated (P-256 key
// made by meshca, sign, lint, sealed key, fsync'd group commit, audit:
// ReissueIdentity) and agent (CSR parsed and its signature checked, node,
// node certificate, assignment and CSR limit checked, sign, lint,
// certificate, holder record and CSR count committed with the audit
// record: SignCSR), with 32 callers per core. The agents' CSRs are made
// before the clock starts: that is the node's work.
//
// The same run measures the raw work each path cannot avoid, on every
// core with no lint and no storage: a P-256 keygen + x509.CreateCertificate
// (server key) and a CSR parse + signature check + x509.CreateCertificate
// (agent). An ECDSA verification costs about two scalar multiplications
// where a keygen costs one fixed-base one, so the agent's raw work is the
// larger; meshca's overhead is what each path costs beyond its raw work.
//
// Each path runs twice, agent, server key, server key, agent, so that
// neither alone meets the machine's quieter or busier moments or the
// bigger store file. It reports certificates per second and process CPU
// per certificate for the four, the ratios agent / server key (goal ≥ 1),
// each path's rate as a share of its raw ceiling, and each path's CPU
// beyond its raw work with their ratio.
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
	raw := newRawIssuer(b)

	workers := 32 * runtime.GOMAXPROCS(0)
	var agentNext, serverNext atomic.Int64
	agentOp := func() error {
		i := int(agentNext.Add(1)) - 1
		h := holders[i/perNode]
		_, err := r.SignCSR(ctx, h.name, h.cert, "web", csrs[i])
		return err
	}
	serverOp := func() error {
		serverNext.Add(1)
		_, err := r.ReissueIdentity(ctx, "web", "bench")
		return err
	}
	var rawNext atomic.Int64
	rawKeygenOp := func() error { return raw.keygenAndSign(rawNext.Add(1)) }
	rawCSROp := func() error { i := rawNext.Add(1); return raw.verifyAndSign(i, csrs[int(i)%len(csrs)]) }

	first, second := b.N/2, b.N-b.N/2
	b.ResetTimer()
	var agent, server, rawKeygen, rawCSR measured
	rawKeygen.add(measure(b, first, runtime.GOMAXPROCS(0), rawKeygenOp))
	rawCSR.add(measure(b, first, runtime.GOMAXPROCS(0), rawCSROp))
	agent.add(measure(b, first, workers, agentOp))
	server.add(measure(b, first, workers, serverOp))
	server.add(measure(b, second, workers, serverOp))
	agent.add(measure(b, second, workers, agentOp))
	rawCSR.add(measure(b, second, runtime.GOMAXPROCS(0), rawCSROp))
	rawKeygen.add(measure(b, second, runtime.GOMAXPROCS(0), rawKeygenOp))
	b.StopTimer()
	if agentNext.Load() != int64(b.N) || serverNext.Load() != int64(b.N) {
		b.Fatalf("%d agent and %d server-key certificates issued; want %d of each", agentNext.Load(), serverNext.Load(), b.N)
	}

	b.ReportMetric(agent.rate(), "agent_csr_certs/s")
	b.ReportMetric(server.rate(), "server_key_certs/s")
	b.ReportMetric(agent.rate()/server.rate(), "ratio")
	b.ReportMetric(rawCSR.rate(), "raw_csr_certs/s")
	b.ReportMetric(rawKeygen.rate(), "raw_keygen_certs/s")
	b.ReportMetric(rawCSR.rate()/rawKeygen.rate(), "raw_ratio")
	// Each path's rate as a share of its own raw ceiling: the agent path
	// keeps the larger share when meshca adds less to it.
	b.ReportMetric(agent.rate()/rawCSR.rate(), "agent_of_raw")
	b.ReportMetric(server.rate()/rawKeygen.rate(), "server_key_of_raw")
	b.ReportMetric(micros(agent.cpuPer()), "agent_cpu_us/cert")
	b.ReportMetric(micros(server.cpuPer()), "server_key_cpu_us/cert")
	b.ReportMetric(micros(rawCSR.cpuPer()), "raw_csr_cpu_us/cert")
	b.ReportMetric(micros(rawKeygen.cpuPer()), "raw_keygen_cpu_us/cert")
	// CPU beyond the raw work, per certificate, and its ratio agent /
	// server key: below 1 when meshca's own part of the agent path is the
	// cheaper one.
	agentOver, serverOver := agent.cpuPer()-rawCSR.cpuPer(), server.cpuPer()-rawKeygen.cpuPer()
	b.ReportMetric(micros(agentOver), "agent_overhead_cpu_us/cert")
	b.ReportMetric(micros(serverOver), "server_key_overhead_cpu_us/cert")
	b.ReportMetric(float64(agentOver)/float64(serverOver), "overhead_ratio")
	b.ReportMetric(float64(agent.cpuPer())/float64(server.cpuPer()), "cpu_ratio")
}

// measured sums the runs of one path.
type measured struct {
	n    int
	wall time.Duration
	cpu  time.Duration
}

func (m *measured) add(o measured) { m.n, m.wall, m.cpu = m.n+o.n, m.wall+o.wall, m.cpu+o.cpu }

func (m measured) rate() float64 { return float64(m.n) / m.wall.Seconds() }

func (m measured) cpuPer() time.Duration { return m.cpu / time.Duration(max(m.n, 1)) }

func micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// measure runs op n times on workers goroutines and returns the wall time
// and the process's CPU time (user + system) it took.
func measure(b *testing.B, n, workers int, op func() error) measured {
	var next atomic.Int64
	var wg sync.WaitGroup
	cpu0, start := processCPU(b), time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(n) {
				if err := op(); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	return measured{n: n, wall: time.Since(start), cpu: processCPU(b) - cpu0}
}

func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// rawIssuer does the least work a certificate needs on each path: no
// policy, no lint, no storage.
type rawIssuer struct {
	key  *ecdsa.PrivateKey
	cert *x509.Certificate
}

func newRawIssuer(b *testing.B) *rawIssuer {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		b.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "raw"}, NotBefore: now, NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		b.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		b.Fatal(err)
	}
	return &rawIssuer{key: key, cert: cert}
}

func (r *rawIssuer) sign(serial int64, pub any) error {
	now := time.Now()
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial + 1), NotBefore: now, NotAfter: now.Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	_, err := x509.CreateCertificate(rand.Reader, tmpl, r.cert, pub, r.key)
	return err
}

// keygenAndSign is the server-key path's raw work: a P-256 key, signed.
func (r *rawIssuer) keygenAndSign(serial int64) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	return r.sign(serial, key.Public())
}

// verifyAndSign is the agent path's raw work: the CSR parsed, its
// signature checked and its key signed.
func (r *rawIssuer) verifyAndSign(serial int64, csrDER []byte) error {
	csr, err := x509.ParseCertificateRequest(csrDER)
	if err != nil {
		return err
	}
	if err := csr.CheckSignature(); err != nil {
		return err
	}
	return r.sign(serial, csr.PublicKey)
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
