package store

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Key names one record for Prefetch.
type Key struct{ bucket, key []byte }

// NodeKey is the record Tx.Node reads.
func NodeKey(name string) Key { return Key{bucketNodes, []byte(name)} }

// CertKey is the record Tx.Cert reads.
func CertKey(serial string) Key { return Key{bucketCerts, []byte(serial)} }

// RevocationKey is the record Tx.Revocation reads.
func RevocationKey(serial string) Key { return Key{bucketRevocations, []byte(serial)} }

// CASetKey is the record Tx.CASet reads.
func CASetKey() Key { return Key{bucketMeta, metaCASet} }

// Prefetch reads the records keys name together, so that the reads of them
// that follow in this transaction are answered from what it read: on etcd
// one round trip (a read-only Txn, at the transaction's revision) instead
// of one per record; on bbolt, whose reads are lookups in memory, it does
// nothing. Every read still answers exactly what it would have without
// Prefetch, a missing record included, and an Update's commit still
// requires that none of them changed. A read error is returned and fails
// the transaction, as a read's does.
func (tx *Tx) Prefetch(keys ...Key) error {
	if err := tx.kv.prefetch(keys); err != nil {
		err = fmt.Errorf("store: prefetch: %w", err)
		tx.fail(err)
		return err
	}
	return nil
}

// prefetch reads the keys not yet read or written, at most maxOps per
// etcd request.
func (t *etcdTx) prefetch(keys []Key) error {
	var names []string
	for _, k := range keys {
		name := t.e.key(k.bucket, k.key)
		if _, ok := t.writes[name]; ok {
			continue
		}
		if _, ok := t.fetched[name]; ok {
			continue
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	for part := range slices.Chunk(names, max(1, t.e.maxOps)) {
		if err := t.getAll(part); err != nil {
			return err
		}
	}
	return nil
}

// getAll reads names in one read-only Txn: etcd answers it as one
// linearizable read, every key at the same revision.
func (t *etcdTx) getAll(names []string) error {
	var opts []clientv3.OpOption
	if t.rev > 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	ops := make([]clientv3.Op, len(names))
	for i, name := range names {
		ops[i] = clientv3.OpGet(name, opts...)
	}
	ctx, release := t.e.contact.bound(t.ctx)
	resp, err := t.e.cli.Txn(ctx).Then(ops...).Commit()
	release()
	if errors.Is(err, rpctypes.ErrCompacted) {
		return errConflict
	}
	if cerr := t.e.contact.failed(err); cerr != nil {
		return cerr
	}
	if err != nil {
		return fmt.Errorf("etcd read failed (endpoints %s; is etcd reachable?): %w", strings.Join(t.e.cli.Endpoints(), ","), err)
	}
	if len(resp.Responses) != len(names) {
		return fmt.Errorf("etcd answered %d reads of %d", len(resp.Responses), len(names))
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	if t.fetched == nil {
		t.fetched = make(map[string][]byte, len(names))
	}
	for i, name := range names {
		var val []byte
		if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
			val = kvs[0].Value
		}
		t.fetched[name] = val
		t.noteRead(name)
	}
	return nil
}
