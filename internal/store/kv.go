package store

import (
	"bytes"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// kv is one transaction on the layout under the typed records: named
// buckets of byte keys kept in byte order. The typed Tx methods, the record
// encoding and the sealing of keys are written once over it; bbolt (boltKV)
// and etcd (etcdTx) implement it.
//
// Reads see the transaction's own writes. A read error is returned; the
// transaction then must not commit. Values returned are only valid inside
// the transaction.
type kv interface {
	// get returns the value of key in bucket, nil when there is none.
	get(bucket, key []byte) ([]byte, error)
	put(bucket, key, val []byte) error
	del(bucket, key []byte) error
	// scan calls fn for every key of bucket that starts with prefix and is
	// not below from (nil: from the prefix on), in key order, until fn
	// returns false.
	scan(bucket, prefix, from []byte, fn func(k, v []byte) bool) error
	// last returns the greatest key of bucket and its value, nil when the
	// bucket is empty. It is the counter behind the gapless audit sequence
	// and mesh versions.
	last(bucket []byte) (k, v []byte, err error)
	// prefetch reads keys at once, so that later gets of them answer
	// without another read; what they answer is what get would have.
	prefetch(keys []Key) error
}

// boltKV is kv on a bbolt transaction: buckets are bbolt buckets, as they
// always were on disk.
type boltKV struct{ btx *bolt.Tx }

var _ kv = boltKV{}

func (b boltKV) bucket(name []byte) (*bolt.Bucket, error) {
	bk := b.btx.Bucket(name)
	if bk == nil {
		return nil, fmt.Errorf("store: bucket %s missing", name)
	}
	return bk, nil
}

func (b boltKV) get(bucket, key []byte) ([]byte, error) {
	bk, err := b.bucket(bucket)
	if err != nil {
		return nil, err
	}
	return bk.Get(key), nil
}

func (b boltKV) put(bucket, key, val []byte) error {
	bk, err := b.bucket(bucket)
	if err != nil {
		return err
	}
	return bk.Put(key, val)
}

func (b boltKV) del(bucket, key []byte) error {
	bk, err := b.bucket(bucket)
	if err != nil {
		return err
	}
	return bk.Delete(key)
}

func (b boltKV) scan(bucket, prefix, from []byte, fn func(k, v []byte) bool) error {
	bk, err := b.bucket(bucket)
	if err != nil {
		return err
	}
	if bytes.Compare(from, prefix) < 0 {
		from = prefix
	}
	c := bk.Cursor()
	var k, v []byte
	if len(from) == 0 {
		k, v = c.First()
	} else {
		k, v = c.Seek(from)
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		if !fn(k, v) {
			return nil
		}
	}
	return nil
}

// prefetch does nothing: a bbolt read is a lookup in memory-mapped pages.
func (b boltKV) prefetch([]Key) error { return nil }

func (b boltKV) last(bucket []byte) ([]byte, []byte, error) {
	bk, err := b.bucket(bucket)
	if err != nil {
		return nil, nil, err
	}
	k, v := bk.Cursor().Last()
	return k, v, nil
}
