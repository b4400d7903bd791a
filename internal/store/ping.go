package store

import (
	"context"
	"fmt"
	"strings"
)

// Ping makes one round trip to where the state is kept. On etcd it is a
// linearizable read of the schema record, which a member answers only while
// it belongs to a quorum: a nil error means the replica could both read and
// commit at that moment. On bbolt the file is local and Ping returns nil.
// The caller bounds it with ctx.
func (s *Store) Ping(ctx context.Context) error {
	if s.etcd == nil {
		return nil
	}
	e := s.etcd
	if e.closed.Load() {
		return ErrClosed
	}
	if _, err := e.cli.Get(ctx, e.key(bucketMeta, metaSchema)); err != nil {
		return fmt.Errorf("store: etcd at %s did not answer: %w", strings.Join(e.cli.Endpoints(), ","), err)
	}
	return nil
}

// Etcd reports whether the store is kept in etcd (opened with OpenEtcd).
func (s *Store) Etcd() bool { return s.etcd != nil }

// inContact reports EtcdConfig.Contact's verdict (nil on bbolt).
func (s *Store) inContact() error {
	if s.contact == nil {
		return nil
	}
	return s.contact()
}
