package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// MigrateProgress is one step of MigrateToEtcd, for the operator.
type MigrateProgress struct {
	Step    string // "clean", "copy", "compare", "check"
	Bucket  string // the bucket of copy and compare
	Records int    // records of Bucket copied or compared so far
}

// MigrateSummary is what MigrateToEtcd copied and checked.
type MigrateSummary struct {
	Prefix  string
	Records map[string]int // per bucket, as copied and compared
	Total   int
	LastSeq uint64 // the newest audit Seq: the etcd store continues after it
	Cleaned bool   // a failed migration's leftovers were removed first
}

// Timeout of the cleanup after a failed migration, which runs after the
// caller's ctx may have ended.
const migrateCleanupTimeout = 30 * time.Second

// MigrateToEtcd copies every record of src, a store opened with Open, into
// the empty etcd prefix of dst, then checks the copy. Values are copied as
// they are: sealed keys stay sealed with src's key-encryption key, which
// every replica on the prefix must therefore use (dst.Sealer is ignored).
//
// All or nothing: the first write puts a marker, P/migrating, in a
// transaction that requires the prefix to be empty; every later write
// requires the marker unchanged; the schema record, which OpenEtcd looks
// for, is written after the last record; the marker is removed last, once
// the copy has been compared record by record with src and both stores
// passed Check. OpenEtcd refuses a prefix that holds the marker
// (ErrMigrating). On failure MigrateToEtcd deletes what it wrote; if that
// fails too, the marker stays, and the next MigrateToEtcd on the prefix
// deletes the leftovers (a prefix holding a marker and no schema record)
// before it starts.
//
// A prefix holding anything else fails with ErrNotEmpty. src must not
// change meanwhile: Open's file lock keeps a meshca server off it.
func MigrateToEtcd(ctx context.Context, src *Store, dst EtcdConfig, progress func(MigrateProgress)) (sum MigrateSummary, err error) {
	if src.etcd != nil || src.db == nil {
		return sum, fmt.Errorf("%w: the source of a migration is a data directory opened with Open", ErrInvalid)
	}
	if progress == nil {
		progress = func(MigrateProgress) {}
	}
	if err := src.Check(ctx); err != nil {
		return sum, fmt.Errorf("store: the data directory fails its check, nothing copied: %w", err)
	}
	dst, prefix, err := dst.withDefaults()
	if err != nil {
		return sum, err
	}
	cli, err := dst.client()
	if err != nil {
		return sum, err
	}
	defer cli.Close()
	e := &etcdStore{cli: cli, prefix: prefix, maxOps: dst.MaxTxnOps, maxBytes: dst.MaxRequestBytes, clock: dst.Clock, log: dst.Logger}
	m := &migration{e: e, src: src, progress: progress, sum: MigrateSummary{Prefix: prefix, Records: map[string]int{}}}

	if m.sum.Cleaned, err = m.cleanFailed(ctx); err != nil {
		return m.sum, err
	}
	if err := m.mark(ctx); err != nil {
		return m.sum, err
	}
	defer func() {
		if err == nil {
			return
		}
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), migrateCleanupTimeout)
		defer cancel()
		if cerr := m.deleteMarked(cctx); cerr != nil {
			err = fmt.Errorf("%w; and what was copied could not be deleted (%v): the marker %s stays, so no meshca starts on it, and the next migrate deletes it", err, cerr, e.migratingKey())
		}
	}()
	if err := m.copy(ctx); err != nil {
		return m.sum, err
	}
	if err := m.seal(ctx); err != nil {
		return m.sum, err
	}
	if err := m.compare(ctx); err != nil {
		return m.sum, err
	}
	progress(MigrateProgress{Step: "check"})
	check := &Store{etcd: e, sealer: src.sealer, clock: e.clock, log: e.log}
	if err := check.Check(ctx); err != nil {
		return m.sum, fmt.Errorf("store: the copy in etcd fails its check: %w", err)
	}
	if err := m.unmark(ctx); err != nil {
		return m.sum, err
	}
	return m.sum, nil
}

func (e *etcdStore) migratingKey() string { return e.prefix + "/migrating" }

// migration is one run of MigrateToEtcd.
type migration struct {
	e         *etcdStore
	src       *Store
	progress  func(MigrateProgress)
	sum       MigrateSummary
	markerRev int64 // the revision that put the marker
	lasts     map[string][]byte
}

// all is the range of every key of the prefix.
func (m *migration) all() (string, string) {
	start := m.e.prefix + "/"
	return start, clientv3.GetPrefixRangeEnd(start)
}

// cleanFailed deletes the leftovers of a failed migration: a prefix whose
// marker is there and whose schema record is not.
func (m *migration) cleanFailed(ctx context.Context) (bool, error) {
	start, end := m.all()
	resp, err := m.e.cli.Txn(ctx).Then(
		clientv3.OpGet(start, clientv3.WithRange(end), clientv3.WithCountOnly()),
		clientv3.OpGet(m.e.migratingKey()),
		clientv3.OpGet(m.e.key(bucketMeta, metaSchema), clientv3.WithCountOnly()),
	).Commit()
	if err != nil {
		return false, fmt.Errorf("store: etcd at %s: %w; check the endpoints and that etcd is running", m.endpoints(), err)
	}
	count := resp.Responses[0].GetResponseRange().Count
	marker := resp.Responses[1].GetResponseRange().Kvs
	schema := resp.Responses[2].GetResponseRange().Count
	switch {
	case count == 0:
		return false, nil
	case len(marker) == 0 || schema > 0:
		return false, fmt.Errorf("%w: %s holds %d keys: migrate into an empty prefix (--etcd-prefix), or, if nothing uses them, delete them with: etcdctl del --prefix %s", ErrNotEmpty, m.e.prefix, count, start)
	}
	m.progress(MigrateProgress{Step: "clean", Records: int(count)})
	m.markerRev = marker[0].ModRevision
	if err := m.deleteMarked(ctx); err != nil {
		return false, fmt.Errorf("store: delete the leftovers of a failed migration under %s: %w", m.e.prefix, err)
	}
	return true, nil
}

// mark puts the marker, if the prefix is empty.
func (m *migration) mark(ctx context.Context) error {
	start, end := m.all()
	rec, _ := json.Marshal(struct {
		From    string    `json:"from"`
		Started time.Time `json:"started"`
	}{m.src.path, m.e.clock.Now().UTC()})
	resp, err := m.e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(start).WithRange(end), "=", 0)).
		Then(clientv3.OpPut(m.e.migratingKey(), string(rec))).
		Commit()
	if err != nil {
		return fmt.Errorf("store: etcd at %s: %w", m.endpoints(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("%w: %s was written to while the migration started", ErrNotEmpty, m.e.prefix)
	}
	m.markerRev = resp.Header.Revision
	return nil
}

// marked commits ops if the marker is still the one this migration put.
func (m *migration) marked(ctx context.Context, ops ...clientv3.Op) error {
	resp, err := m.e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(m.e.migratingKey()), "=", m.markerRev)).
		Then(ops...).
		Commit()
	if err != nil {
		return fmt.Errorf("store: etcd write failed (endpoints %s): %w", m.endpoints(), err)
	}
	if !resp.Succeeded {
		return fmt.Errorf("store: the migration marker %s changed: another migration runs on %s", m.e.migratingKey(), m.e.prefix)
	}
	return nil
}

func (m *migration) deleteMarked(ctx context.Context) error {
	start, end := m.all()
	return m.marked(ctx, clientv3.OpDelete(start, clientv3.WithRange(end)))
}

// copy writes every record of every bucket but the schema, in
// transactions within etcd's limits (one compare: the marker).
func (m *migration) copy(ctx context.Context) error {
	m.lasts = map[string][]byte{}
	var (
		ops  []clientv3.Op
		size int
	)
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		err := m.marked(ctx, ops...)
		ops, size = nil, 0
		return err
	}
	return m.src.db.View(func(btx *bolt.Tx) error {
		src := boltKV{btx}
		for _, bucket := range allBuckets {
			name := string(bucket)
			n := 0
			var ferr error
			err := src.scan(bucket, nil, nil, func(k, v []byte) bool {
				if name == string(bucketMeta) && bytes.Equal(k, metaSchema) {
					return true // written last, by seal
				}
				key := m.e.key(bucket, k)
				if len(ops)+1 >= m.e.maxOps || size+len(key)+len(v) > m.e.maxBytes*3/4 {
					if ferr = flush(); ferr != nil {
						return false
					}
					m.progress(MigrateProgress{Step: "copy", Bucket: name, Records: n})
				}
				ops = append(ops, clientv3.OpPut(key, string(v)))
				size += len(key) + len(v) + 16
				n++
				if lastCounted[name] {
					m.lasts[name] = bytes.Clone(k)
				}
				return true
			})
			if err == nil {
				err = ferr
			}
			if err == nil {
				err = flush()
			}
			if err != nil {
				return fmt.Errorf("copy %s: %w", name, err)
			}
			m.progress(MigrateProgress{Step: "copy", Bucket: name, Records: n})
			m.sum.Records[name] = n
			m.sum.Total += n
		}
		return nil
	})
}

// seal writes what makes the prefix a store: the counters of P/last/, the
// key-encryption key check and the schema record.
func (m *migration) seal(ctx context.Context) error {
	var schema []byte
	if err := m.src.db.View(func(btx *bolt.Tx) error {
		schema = bytes.Clone(btx.Bucket(bucketMeta).Get(metaSchema))
		return nil
	}); err != nil {
		return err
	}
	check, err := m.src.sealer.Seal([]byte(etcdKEKCheckPlain), []byte(etcdKEKCheckAAD))
	if err != nil {
		return fmt.Errorf("store: seal kek check: %w", err)
	}
	ops := []clientv3.Op{
		clientv3.OpPut(m.e.key(bucketMeta, metaKEKCheck), string(check)),
		clientv3.OpPut(m.e.key(bucketMeta, metaSchema), string(schema)),
	}
	for bucket, k := range m.lasts {
		ops = append(ops, clientv3.OpPut(m.e.lastKey([]byte(bucket)), string(k)))
	}
	if err := m.src.View(ctx, func(tx *Tx) error { m.sum.LastSeq = tx.LastSeq(); return nil }); err != nil {
		return err
	}
	if err := m.marked(ctx, ops...); err != nil {
		return err
	}
	m.sum.Records[string(bucketMeta)]++ // the schema record
	m.sum.Total++
	return nil
}

// compare reads the copy back and compares it with src, bucket by bucket
// and record by record.
func (m *migration) compare(ctx context.Context) error {
	var problems []error
	err := m.src.db.View(func(btx *bolt.Tx) error {
		src := boltKV{btx}
		for _, bucket := range allBuckets {
			name := string(bucket)
			want := map[string][]byte{}
			_ = src.scan(bucket, nil, nil, func(k, v []byte) bool {
				want[string(k)] = bytes.Clone(v)
				return true
			})
			n := 0
			err := m.scanEtcd(ctx, bucket, func(k, v []byte) {
				if name == string(bucketMeta) && bytes.Equal(k, metaKEKCheck) {
					return // etcd's own
				}
				w, ok := want[string(k)]
				switch {
				case !ok:
					problems = append(problems, fmt.Errorf("%s/%s: in etcd, not in the data directory", name, k))
				case !bytes.Equal(w, v):
					problems = append(problems, fmt.Errorf("%s/%s: differs", name, k))
				}
				delete(want, string(k))
				n++
			})
			if err != nil {
				return err
			}
			for k := range want {
				problems = append(problems, fmt.Errorf("%s/%s: not copied", name, k))
			}
			m.progress(MigrateProgress{Step: "compare", Bucket: name, Records: n})
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: compare the copy: %w", err)
	}
	if len(problems) > 0 {
		return fmt.Errorf("store: the copy in etcd differs from the data directory: %w", errors.Join(problems...))
	}
	return nil
}

// scanEtcd calls fn for every record of bucket in etcd, in pages.
func (m *migration) scanEtcd(ctx context.Context, bucket []byte, fn func(k, v []byte)) error {
	bp := m.e.bucketPrefix(bucket)
	end := clientv3.GetPrefixRangeEnd(bp)
	from := bp
	for {
		resp, err := m.e.cli.Get(ctx, from, clientv3.WithRange(end), clientv3.WithLimit(etcdPageSize))
		if err != nil {
			return fmt.Errorf("etcd read failed (endpoints %s): %w", m.endpoints(), err)
		}
		for _, kv := range resp.Kvs {
			if k := string(kv.Key); k != bp { // not the bucket's deletion mark
				fn([]byte(k[len(bp):]), kv.Value)
			}
		}
		if !resp.More || len(resp.Kvs) == 0 {
			return nil
		}
		from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// unmark removes the marker: the prefix is now a store.
func (m *migration) unmark(ctx context.Context) error {
	return m.marked(ctx, clientv3.OpDelete(m.e.migratingKey()))
}

func (m *migration) endpoints() string { return fmt.Sprint(m.e.cli.Endpoints()) }
