package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/meshca/meshca/internal/clock"
)

// Defaults of PruneConfig.
const (
	// DefaultCertRetention is how long an expired certificate is kept
	// after its NotAfter.
	DefaultCertRetention = 7 * 24 * time.Hour
	// DefaultPruneInterval is the time between two prune runs.
	DefaultPruneInterval = time.Hour
	// DefaultRevisionRetention is how long etcd keeps the old revisions
	// of meshca's keys: a replica whose watch lags further behind
	// resyncs.
	DefaultRevisionRetention = time.Hour
)

// ActionPrune is the audit action of a prune run that removed records or
// compacted etcd.
const ActionPrune = "store.prune"

// pruneBatch bounds the records one prune transaction removes: a
// certificate is two etcd operations (record and index), and a
// transaction may hold 128 (--max-txn-ops).
const pruneBatch = 50

// Log attribute keys of pruning.
const (
	logPrunedCerts = "certificates"
	logPrunedRevs  = "revocations"
)

// PruneConfig says what Prune removes and when RunPrune runs. Zero fields
// take their defaults.
type PruneConfig struct {
	// CertRetention: a certificate that expired longer ago than this is
	// removed with its index entry, unless it is still some identity's,
	// node's or agent node's current certificate; a revocation record
	// too (by then no CRL lists it: CRLs list unexpired certificates).
	CertRetention time.Duration
	// Interval is the time between two runs of RunPrune.
	Interval time.Duration
	// RevisionRetention (etcd): each run compacts etcd's history to the
	// newest revision this store read at least that long ago.
	RevisionRetention time.Duration
	// Clock times RunPrune's runs and tells the time certificates are
	// judged by (default: the store's clock).
	Clock clock.Clock
}

func (c PruneConfig) withDefaults(s *Store) PruneConfig {
	if c.CertRetention <= 0 {
		c.CertRetention = DefaultCertRetention
	}
	if c.Interval <= 0 {
		c.Interval = DefaultPruneInterval
	}
	if c.RevisionRetention <= 0 {
		c.RevisionRetention = DefaultRevisionRetention
	}
	if c.Clock == nil {
		c.Clock = s.clock
	}
	return c
}

// Pruned is what one Prune run did.
type Pruned struct {
	Certs       int   // certificates removed
	Revocations int   // revocation records removed
	Compacted   int64 // etcd: the revision compacted to in this run, 0 if none
}

// revisionAt is a revision of etcd and when this store read it.
type revisionAt struct {
	at  time.Time
	rev int64
}

// compaction is what the etcd store remembers between prune runs: the
// revisions it read, oldest first, and the one it last compacted to.
type compaction struct {
	mu        sync.Mutex
	seen      []revisionAt
	compacted int64
}

// RunPrune prunes at once and then every cfg.Interval until ctx ends; a
// failed run is logged and tried again at the next. It is the leader's
// work: with a fenced ctx (WithFence) a deposed leader removes nothing.
func (s *Store) RunPrune(ctx context.Context, cfg PruneConfig) error {
	cfg = cfg.withDefaults(s)
	for {
		if _, err := s.Prune(ctx, cfg.Clock.Now(), cfg); err != nil && ctx.Err() == nil {
			s.log.Error("prune failed; will retry", logErr, err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-cfg.Clock.After(cfg.Interval):
		}
	}
}

// Prune removes once what only grows and is no longer needed at now (see
// PruneConfig), in transactions of at most 50 records, each with one audit
// event counting what it removed, and on etcd compacts old revisions. The
// audit log and the mesh versions are kept: they are the history an
// operator reads. A run that removes nothing and compacts nothing writes
// nothing.
func (s *Store) Prune(ctx context.Context, now time.Time, cfg PruneConfig) (Pruned, error) {
	cfg = cfg.withDefaults(s)
	var out Pruned
	if s.etcd != nil {
		rev, err := s.etcd.compact(ctx, now, cfg.RevisionRetention)
		if err != nil {
			return out, err
		}
		out.Compacted = rev
	}
	certs, revs, err := s.pruneCandidates(ctx, now.Add(-cfg.CertRetention))
	if err != nil {
		return out, err
	}
	detail := func(c, r int) string {
		d := fmt.Sprintf("certificates=%d revocations=%d cert_retention=%s", c, r, cfg.CertRetention)
		if out.Compacted > 0 {
			d += fmt.Sprintf(" compacted_revision=%d", out.Compacted)
		}
		return d
	}
	for len(certs) > 0 || len(revs) > 0 {
		nc := min(len(certs), pruneBatch)
		nr := min(len(revs), pruneBatch-nc)
		var removedCerts, removedRevs int
		err := s.Update(ctx, func(tx *Tx) error {
			removedCerts, removedRevs = 0, 0
			for _, c := range certs[:nc] {
				ok, err := tx.deleteCert(c)
				if err != nil {
					return err
				}
				if ok {
					removedCerts++
				}
			}
			for _, serial := range revs[:nr] {
				ok, err := tx.deleteRevocation(serial)
				if err != nil {
					return err
				}
				if ok {
					removedRevs++
				}
			}
			if removedCerts+removedRevs == 0 {
				return nil
			}
			_, err := tx.Append(Event{Action: ActionPrune, Actor: "meshca", Detail: detail(removedCerts, removedRevs)})
			return err
		})
		if err != nil {
			return out, fmt.Errorf("store: prune: %w", err)
		}
		out.Certs += removedCerts
		out.Revocations += removedRevs
		certs, revs = certs[nc:], revs[nr:]
	}
	if out.Certs+out.Revocations == 0 && out.Compacted > 0 {
		if _, err := s.Append(ctx, Event{Action: ActionPrune, Actor: "meshca", Detail: detail(0, 0)}); err != nil {
			return out, fmt.Errorf("store: prune: %w", err)
		}
	}
	if out != (Pruned{}) {
		s.log.Info("store pruned", logPrunedCerts, out.Certs, logPrunedRevs, out.Revocations, logCompacted, out.Compacted)
	}
	return out, nil
}

// pruneCandidates lists the certificates and revocation records that
// expired before cutoff and that no identity, node or agent node holds as
// current. A certificate expired that long ago never becomes current
// again, so the list stays true until the deletes run; they check only
// that each record is still there.
func (s *Store) pruneCandidates(ctx context.Context, cutoff time.Time) (certs []Cert, revs []string, err error) {
	err = s.View(ctx, func(tx *Tx) error {
		certs, revs = nil, nil
		held := map[string]bool{}
		if err := each(tx, bucketIdentities, func(id Identity) { held[id.CurrentSerial] = true }); err != nil {
			return err
		}
		if err := each(tx, bucketNodes, func(n Node) { held[n.CertSerial], held[n.NextSerial] = true, true }); err != nil {
			return err
		}
		hs, err := tx.holders([]byte("i\x00"))
		if err != nil {
			return err
		}
		for _, h := range hs {
			held[h.Serial] = true
		}
		err = tx.scan(bucketCerts, nil, nil, func(k, v []byte) error {
			var rec certRecord
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("store: decode certificate %s: %w", k, err)
			}
			if rec.NotAfter.Before(cutoff) && !held[rec.Serial] {
				certs = append(certs, rec.Cert)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return each(tx, bucketRevocations, func(r Revocation) {
			if r.NotAfter.Before(cutoff) && !held[r.Serial] {
				revs = append(revs, r.Serial)
			}
		})
	})
	return certs, revs, err
}

// deleteCert removes c and its index entry; false when it is gone already.
func (tx *Tx) deleteCert(c Cert) (bool, error) {
	if err := tx.checkWrite(); err != nil {
		return false, err
	}
	if !tx.has(bucketCerts, []byte(c.Serial)) {
		return false, tx.err
	}
	if err := tx.kv.del(bucketCerts, []byte(c.Serial)); err != nil {
		return false, fmt.Errorf("store: delete certificate %s: %w", c.Serial, err)
	}
	if err := tx.kv.del(bucketCertsByID, certIndexKey(c.Identity, c.NotBefore, c.Serial)); err != nil {
		return false, fmt.Errorf("store: delete index of certificate %s: %w", c.Serial, err)
	}
	tx.wrote = true
	kind := KindCert
	if c.Node != "" {
		kind = KindAgentCert
	}
	tx.tracked(kind, c.Serial, c.Identity)
	return true, nil
}

// deleteRevocation removes the revocation record of serial; false when it
// is gone already.
func (tx *Tx) deleteRevocation(serial string) (bool, error) {
	if err := tx.checkWrite(); err != nil {
		return false, err
	}
	var r Revocation
	if err := tx.get(bucketRevocations, []byte(serial), &r); errors.Is(err, ErrNotFound) {
		return false, nil
	} else if err != nil {
		return false, err
	}
	if err := tx.kv.del(bucketRevocations, []byte(serial)); err != nil {
		return false, fmt.Errorf("store: delete revocation %s: %w", serial, err)
	}
	tx.wrote = true
	tx.tracked(KindRevocation, serial, r.Identity)
	return true, nil
}

// compact records the revision etcd is at now, and compacts etcd's
// history to the newest revision read at least retention ago, if that is
// newer than the last compaction. It returns the revision compacted to,
// 0 when it did not compact. A revision that etcd compacted already (its
// own --auto-compaction) counts as done.
func (e *etcdStore) compact(ctx context.Context, now time.Time, retention time.Duration) (int64, error) {
	resp, err := e.cli.Get(ctx, e.key(bucketMeta, metaSchema))
	if err != nil {
		return 0, fmt.Errorf("store: read etcd's revision: %w", err)
	}
	c := &e.compaction
	c.mu.Lock()
	defer c.mu.Unlock()
	c.seen = append(c.seen, revisionAt{at: now, rev: resp.Header.Revision})
	var target int64
	keep := 0
	for i, r := range c.seen {
		if r.at.After(now.Add(-retention)) {
			break
		}
		target, keep = r.rev, i
	}
	// The entry compacted to stays, as the floor of the next run.
	c.seen = c.seen[keep:]
	if target <= c.compacted {
		return 0, nil
	}
	if _, err := e.cli.Compact(ctx, target); err != nil && !errors.Is(err, rpctypes.ErrCompacted) {
		return 0, fmt.Errorf("store: compact etcd to revision %d: %w", target, err)
	}
	c.compacted = target
	return target, nil
}
