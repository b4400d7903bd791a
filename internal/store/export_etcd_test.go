package store

// EtcdTxns is how many etcd transactions s committed.
func EtcdTxns(s *Store) uint64 { return s.etcd.txns.Load() }
