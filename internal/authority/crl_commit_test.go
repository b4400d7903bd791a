package authority_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// crlIssues returns the numbers of the crl.issue audit records, in audit
// order.
func crlIssues(t *testing.T, r *rig) []uint64 {
	t.Helper()
	var out []uint64
	for _, ev := range events(t, r) {
		if ev.Action != authority.ActionCRLIssue {
			continue
		}
		var n uint64
		if _, err := fmt.Sscanf(ev.Detail, "crl_number=%d", &n); err != nil {
			t.Fatalf("crl.issue record %q: %v", ev.Detail, err)
		}
		out = append(out, n)
	}
	return out
}

// committedRevocations reads the serials on the store's revocation list as
// committed.
func committedRevocations(ctx context.Context, st *store.Store) (map[string]bool, error) {
	out := map[string]bool{}
	err := st.View(ctx, func(tx *store.Tx) error {
		revs, err := tx.Revocations()
		for _, rv := range revs {
			out[rv.Serial] = true
		}
		return err
	})
	return out, err
}

// Revocations that share group commits with failing writes (so their
// functions run again) sign each CRL once, after the commit, from committed
// revocations only, and the last CRL lists every revocation.
func TestCRLSignedOnceAfterGroupCommit(t *testing.T) {
	ctx := context.Background()
	dir := dataDir(t)
	sealer, err := seal.LoadOrCreate(filepath.Join(dir, "kek"))
	if err != nil {
		t.Fatal(err)
	}
	var (
		armed   atomic.Bool
		entered = make(chan struct{}, 64)
	)
	st, err := store.Open(store.Config{Dir: dir, Sealer: sealer, Fault: func() error {
		if armed.Load() {
			entered <- struct{}{}
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	r := newRig(t, st, clock.NewFake(t0))

	const n = 6
	var names []string
	for i := range n {
		name := fmt.Sprintf("svc%d", i)
		names = append(names, name)
		if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: name, TTL: 24 * time.Hour}, "test"); err != nil {
			t.Fatal(err)
		}
	}
	var (
		signatures atomic.Int64
		badSign    atomic.Value // first problem seen by the signer
	)
	authority.SetSignCRL(r.Authority, func(c *x509.Certificate, k crypto.Signer, revoked []ca.Revoked, num *big.Int, this, next time.Time) ([]byte, error) {
		signatures.Add(1)
		committed, err := committedRevocations(ctx, st)
		if err != nil {
			badSign.CompareAndSwap(nil, err.Error())
		}
		for _, rv := range revoked {
			if s := rv.Serial; !committed[s] {
				badSign.CompareAndSwap(nil, "signed a revocation that is not committed: "+s)
			}
		}
		return ca.SignCRL(c, k, revoked, num, this, next)
	})
	before := len(crlIssues(t, r))

	// Hold the committer so that the revocations and the failing writes
	// queue together for the next shared transaction.
	holding, release := make(chan struct{}), make(chan struct{})
	var releaseOnce sync.Once
	letGo := func() { releaseOnce.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the store closes, whatever fails
	held := make(chan error, 1)
	go func() {
		held <- st.Update(ctx, func(*store.Tx) error {
			select {
			case <-holding:
			default:
				close(holding)
			}
			<-release
			return nil
		})
	}()
	<-holding
	armed.Store(true)
	refused := errors.New("refused")
	var wg sync.WaitGroup
	results := make([]registry.Revoked, n)
	errs := make([]error, n)
	var reruns atomic.Int64
	for i, name := range names {
		wg.Add(2)
		go func() {
			defer wg.Done()
			// After its commit, as the admin API does.
			if results[i], errs[i] = r.RevokeIdentity(ctx, name, "test", "test"); errs[i] == nil {
				errs[i] = r.PublishCRL(ctx)
			}
		}()
		go func() {
			defer wg.Done()
			_ = st.Update(ctx, func(tx *store.Tx) error {
				// A revocation seen here is not committed yet: this
				// failure makes it run again.
				for _, other := range names {
					if id, err := tx.Identity(other); err == nil && id.State == store.StateRevoked {
						reruns.Add(1)
						break
					}
				}
				return refused
			})
		}()
	}
	deadline := time.After(10 * time.Second)
	for range 2 * n {
		select {
		case <-entered:
		case <-deadline:
			t.Fatal("the revocations did not reach the store together: something serializes them before their transaction")
		}
	}
	letGo()
	wg.Wait()
	if err := <-held; err != nil {
		t.Fatal(err)
	}

	var want []string
	for i, err := range errs {
		if err != nil {
			t.Fatalf("revoke %s: %v", names[i], err)
		}
		want = append(want, results[i].Serials...)
	}
	slices.Sort(want)
	if v := badSign.Load(); v != nil {
		t.Fatal(v)
	}
	crl := parseCRL(t, r.CRL())
	if got := crlSerials(crl); !slices.Equal(got, want) {
		t.Fatalf("last CRL lists %v, want every revoked certificate %v", got, want)
	}
	issued := crlIssues(t, r)[before:]
	if int64(len(issued)) != signatures.Load() {
		t.Fatalf("%d signatures for %d CRLs issued: a CRL was signed in a transaction that ran again", signatures.Load(), len(issued))
	}
	for i := 1; i < len(issued); i++ {
		if issued[i] <= issued[i-1] {
			t.Fatalf("CRL numbers %v do not only grow", issued)
		}
	}
	if last := issued[len(issued)-1]; crl.Number.Uint64() != last {
		t.Fatalf("CRL in use is number %v, the last issued %d", crl.Number, last)
	}
	t.Logf("%d revocations sharing commits with %d failing writes (revocation functions seen uncommitted by a failing write: %d): %d CRLs issued, %d signatures",
		n, n, reruns.Load(), len(issued), signatures.Load())
}

// Two revocations at once, each followed by PublishCRL, end with a CRL that
// lists both, whichever publishes last, and with a number above the
// other's.
func TestCRLConcurrentRevocationsBothListed(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	r := newRig(t, st, clock.NewFake(t0))
	for round := range 5 {
		a, b := fmt.Sprintf("a%d", round), fmt.Sprintf("b%d", round)
		for _, name := range []string{a, b} {
			if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: name, TTL: 24 * time.Hour}, "test"); err != nil {
				t.Fatal(err)
			}
		}
		start := make(chan struct{})
		var wg sync.WaitGroup
		res := make([]registry.Revoked, 2)
		errs := make([]error, 2)
		for i, name := range []string{a, b} {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				if res[i], errs[i] = r.RevokeIdentity(ctx, name, "test", "test"); errs[i] == nil {
					errs[i] = r.PublishCRL(ctx)
				}
			}()
		}
		close(start)
		wg.Wait()
		for _, err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		crl := parseCRL(t, r.CRL())
		got := crlSerials(crl)
		for _, s := range append(res[0].Serials, res[1].Serials...) {
			if _, ok := slices.BinarySearch(got, s); !ok {
				t.Fatalf("round %d: CRL %v lacks %s", round, got, s)
			}
		}
		issued := crlIssues(t, r)
		if !slices.IsSorted(issued) || issued[len(issued)-1] != crl.Number.Uint64() {
			t.Fatalf("round %d: CRL numbers issued %v, in use %v", round, issued, crl.Number)
		}
	}
}

// A CRL that cannot be signed does not undo the revocation: the failure is
// logged and the CRL refresh publishes it.
func TestCRLSigningFailureRetried(t *testing.T) {
	ctx := context.Background()
	st := openStore(t, dataDir(t))
	var logs bytes.Buffer
	r := newRigWith(t, st, clock.NewFake(t0), slog.New(slog.NewTextHandler(&logs, nil)))
	if _, err := r.AddIdentity(ctx, registry.AddIdentity{Name: "echo", TTL: 24 * time.Hour}, "test"); err != nil {
		t.Fatal(err)
	}
	var fail atomic.Bool
	fail.Store(true)
	authority.SetSignCRL(r.Authority, func(c *x509.Certificate, k crypto.Signer, revoked []ca.Revoked, num *big.Int, this, next time.Time) ([]byte, error) {
		if fail.Load() {
			return nil, errors.New("signer unavailable")
		}
		return ca.SignCRL(c, k, revoked, num, this, next)
	})
	res, err := r.RevokeIdentity(ctx, "echo", "test", "test")
	if err != nil {
		t.Fatalf("the revocation committed but returned %v", err)
	}
	if id, _ := r.Identity(ctx, "echo"); id.Identity.State != store.StateRevoked {
		t.Fatalf("identity state %q after revoke", id.Identity.State)
	}
	if err := r.PublishCRL(ctx); err == nil || !strings.Contains(err.Error(), "signer unavailable") {
		t.Fatalf("PublishCRL with a failing signer: %v", err)
	}
	if r.CRL() != nil {
		t.Fatal("a CRL was published although signing failed")
	}
	if !strings.Contains(logs.String(), "not published") || !strings.Contains(logs.String(), "signer unavailable") {
		t.Fatalf("failure not logged: %s", logs.String())
	}
	if !authority.CRLStale(r.Authority) {
		t.Fatal("not marked stale after the CRL failed")
	}
	// Not due by age: only the failed publication makes the refresh build.
	fail.Store(false)
	if err := r.RefreshCRL(ctx); err != nil {
		t.Fatal(err)
	}
	p := r.CRL()
	if p == nil {
		t.Fatal("the CRL refresh did not publish the revocation's CRL")
	}
	want := slices.Clone(res.Serials)
	slices.Sort(want)
	if got := crlSerials(parseCRL(t, p)); !slices.Equal(got, want) {
		t.Fatalf("CRL lists %v, want %v", got, want)
	}
	if authority.CRLStale(r.Authority) {
		t.Fatal("still marked stale after the CRL was published")
	}
}
