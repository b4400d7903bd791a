package authority

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"strings"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/store"
)

// ActionCRLIssue audits each CRL stored.
const ActionCRLIssue = "crl.issue"

// CRL timing. An expired CRL fails every handshake that checks it, so it is
// valid for a day and signed again after a quarter of that.
const (
	CRLValidity = 24 * time.Hour
	crlRefresh  = CRLValidity / 4
	// crlTick is how often RunCRL looks at the CRL.
	crlTick = time.Minute
	// crlRaces bounds how often one publication reads the state again
	// after another signer stored a newer CRL.
	crlRaces = 3
)

// errCRLNewer: another signer stored a CRL with a higher number meanwhile.
var errCRLNewer = errors.New("a newer CRL is in the store")

// CRL returns the CRL in the store as PEM, or nil when no unexpired
// certificate is revoked.
func (a *Authority) CRL() []byte {
	rec, err := a.storedCRL(context.Background())
	if err != nil {
		a.log.Error("cannot read the CRL", "err", err)
		return nil
	}
	return rec.PEM
}

// CRLAge is how old the stored CRL is; ok is false when none is.
func (a *Authority) CRLAge() (time.Duration, bool) {
	rec, err := a.storedCRL(context.Background())
	if err != nil || rec.PEM == nil {
		return 0, false
	}
	return a.cfg.Clock.Now().Sub(rec.ThisUpdate), true
}

func (a *Authority) storedCRL(ctx context.Context) (store.CRL, error) {
	var rec store.CRL
	err := a.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		rec, err = tx.CRL()
		if errors.Is(err, store.ErrNotFound) {
			rec, err = store.CRL{}, nil
		}
		return err
	})
	return rec, err
}

// PublishCRL makes sure the CRL in the store lists every committed
// revocation: it signs one, outside any transaction, and stores it with its
// audit record, unless the stored CRL already lists exactly the unexpired
// revocations for the issuers in use and is not due (a quarter of its
// validity after it was signed); once every entry has expired the CRL is
// withdrawn. Run calls it for every revocation the change feed reports; a
// caller that must know the CRL is stored when it returns (an admin
// revocation with wait=pushed) calls it after its commit. It goes on when
// ctx ends: the revocation it covers is committed.
func (a *Authority) PublishCRL(ctx context.Context) error {
	_, err := a.publishCRLLocked(ctx)
	return err
}

func (a *Authority) publishCRLLocked(ctx context.Context) (store.CRL, error) {
	a.crlMu.Lock()
	defer a.crlMu.Unlock()
	rec, err := a.publishCRL(context.WithoutCancel(ctx))
	// Replicas sign for the same commit from the same feed: the loser of
	// that race finds a newer CRL, which is expected. It reads the state
	// again: the newer CRL usually lists exactly these revocations, else
	// it signs one above it.
	for race := 1; errors.Is(err, errCRLNewer) && race <= crlRaces; race++ {
		a.log.Debug("another signer stored a newer CRL meanwhile; checking it", "err", err, "race", race)
		rec, err = a.publishCRL(context.WithoutCancel(ctx))
	}
	if err != nil {
		a.crlStale.Store(true)
		a.log.Error("the CRL for the committed revocations was not published; the CRL refresh retries it", "err", err)
		return store.CRL{}, err
	}
	a.crlStale.Store(false)
	return rec, nil
}

// RefreshCRL is PublishCRL for the refresh loop: the CRL is signed again
// when due, or when a revocation's CRL could not be stored.
func (a *Authority) RefreshCRL(ctx context.Context) error {
	stale := a.crlStale.Load()
	rec, err := a.publishCRLLocked(ctx)
	if err != nil {
		return fmt.Errorf("refresh CRL: %w", err)
	}
	if stale {
		a.log.Info("CRL published after an earlier failure", "crl_number", rec.Number, "entries", rec.Entries)
	}
	return nil
}

// crlInput is what a CRL is built from, read in one View.
type crlInput struct {
	seq      uint64
	issuer   string // the issuer in use
	stored   store.CRL
	byIssuer map[string][]ca.Revoked
	issuers  []string
	recs     []store.CA
	live     int
	covers   string
}

// readCRLInput reads the committed revocations, the issuers whose leaves
// may be in use and the stored CRL.
func (a *Authority) readCRLInput(ctx context.Context, now time.Time) (crlInput, error) {
	var in crlInput
	err := a.cfg.Store.View(ctx, func(tx *store.Tx) error {
		in = crlInput{seq: tx.LastSeq(), byIssuer: map[string][]ca.Revoked{}}
		var err error
		if in.stored, err = tx.CRL(); errors.Is(err, store.ErrNotFound) {
			in.stored = store.CRL{}
		} else if err != nil {
			return err
		}
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		in.issuer = set.IssuerSerial
		revs, err := tx.Revocations()
		if err != nil {
			return err
		}
		// One CRL per issuer with unexpired revoked certificates: during
		// a CA rotation the previous intermediate's leaves are still
		// trusted.
		for _, rv := range revs {
			if !rv.NotAfter.After(now) {
				continue
			}
			in.live++
			if _, ok := in.byIssuer[rv.IssuerSerial]; !ok {
				in.issuers = append(in.issuers, rv.IssuerSerial)
			}
			in.byIssuer[rv.IssuerSerial] = append(in.byIssuer[rv.IssuerSerial], ca.Revoked{Serial: rv.Serial, RevokedAt: rv.RevokedAt, ReasonCode: ca.ReasonCode(rv.Reason)})
		}
		if in.live == 0 {
			return nil
		}
		// Envoy checks CRLs for every leaf once any CRL is configured,
		// and refuses a leaf whose issuer has none: publish one, empty
		// if need be, for every issuer whose leaves may be in use.
		inUse := []string{set.IssuerSerial}
		if set.Rotation != nil {
			inUse = append(inUse, set.Rotation.PreviousIssuer, set.Rotation.NextIssuer)
		}
		for _, is := range inUse {
			if _, ok := in.byIssuer[is]; !ok && is != "" {
				in.byIssuer[is] = nil
				in.issuers = append(in.issuers, is)
			}
		}
		sort.Strings(in.issuers)
		for _, is := range in.issuers {
			rec, err := tx.CA(is)
			if err != nil {
				return fmt.Errorf("CRL issuer %s: %w", is, err)
			}
			in.recs = append(in.recs, rec)
		}
		return nil
	})
	if err != nil {
		return crlInput{}, fmt.Errorf("read revocations: %w", err)
	}
	in.covers = covers(in.issuers, in.byIssuer)
	return in, nil
}

// covers sums up the issuers and serials a CRL lists.
func covers(issuers []string, byIssuer map[string][]ca.Revoked) string {
	if len(issuers) == 0 {
		return ""
	}
	h := sha256.New()
	for _, is := range issuers {
		serials := make([]string, 0, len(byIssuer[is]))
		for _, rv := range byIssuer[is] {
			serials = append(serials, rv.Serial)
		}
		sort.Strings(serials)
		fmt.Fprintf(h, "%s:%s;", is, strings.Join(serials, ","))
	}
	return hex.EncodeToString(h.Sum(nil))
}

// publishCRL runs under crlMu, which keeps one process from signing twice
// for the same state; the number check in the transaction keeps an older
// CRL from replacing a newer one whoever signed it.
func (a *Authority) publishCRL(ctx context.Context) (store.CRL, error) {
	now := a.cfg.Clock.Now().UTC()
	in, err := a.readCRLInput(ctx, now)
	if err != nil {
		return store.CRL{}, err
	}
	cur := in.stored
	switch {
	case in.live == 0 && cur.PEM == nil:
		return cur, nil // nothing revoked, nothing served
	case in.live > 0 && cur.PEM != nil && cur.Covers == in.covers && now.Before(cur.ThisUpdate.Add(crlRefresh)):
		return cur, nil // the stored CRL lists exactly these and is not due
	}
	// Above the audit sequence of every change it covers and above the
	// CRL in use, so numbers only grow, across restarts too.
	rec := store.CRL{Number: max(in.seq, cur.Number) + 1, ThisUpdate: now}
	ev := store.Event{Action: ActionCRLIssue, Actor: "meshca"}
	if in.live == 0 {
		ev.Serial, ev.Detail = in.issuer, "withdrawn: every revoked certificate has expired"
	} else {
		rec.NextUpdate, rec.Issuers, rec.Covers = now.Add(CRLValidity), in.issuers, in.covers
		for i, is := range in.issuers {
			cert, key, err := parseCA(in.recs[i])
			if err != nil {
				return store.CRL{}, err
			}
			if key == nil {
				a.log.Error("cannot sign a CRL for an issuer whose key meshca does not hold", "issuer", is)
				continue
			}
			pem, err := a.signCRL(cert, key, in.byIssuer[is], new(big.Int).SetUint64(rec.Number), now, rec.NextUpdate)
			if err != nil {
				return store.CRL{}, err
			}
			rec.PEM = append(rec.PEM, pem...)
			rec.Entries += len(in.byIssuer[is])
		}
		ev.Serial = strings.Join(rec.Issuers, ",")
		ev.Detail = fmt.Sprintf("crl_number=%d entries=%d issuers=%d next_update=%s", rec.Number, rec.Entries, len(rec.Issuers), rec.NextUpdate.Format(time.RFC3339))
	}
	err = a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		if in, err := tx.CRL(); err == nil && in.Number >= rec.Number {
			return fmt.Errorf("CRL %d not stored: %w (number %d)", rec.Number, errCRLNewer, in.Number)
		}
		if err := tx.PutCRL(rec); err != nil {
			return err
		}
		_, err := tx.Append(ev)
		return err
	})
	if err != nil {
		return store.CRL{}, fmt.Errorf("store CRL: %w", err)
	}
	if cur.PEM != nil && rec.PEM != nil && now.Sub(cur.ThisUpdate) > CRLValidity*3/4 {
		a.log.Error("the CRL was refreshed late: it was close to its nextUpdate", "age", now.Sub(cur.ThisUpdate))
	}
	a.log.Info("CRL stored", "crl_number", rec.Number, "entries", rec.Entries, "next_update", rec.NextUpdate)
	return rec, nil
}

// RunCRL keeps the CRL fresh until ctx is done.
func (a *Authority) RunCRL(ctx context.Context) error {
	for {
		if err := a.RefreshCRL(ctx); err != nil {
			a.log.Error("CRL refresh failed; will retry", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.cfg.Clock.After(crlTick):
		}
	}
}
