// Package store keeps all of meshca's state in one bbolt file,
// <data-dir>/meshca.db (Open, the embedded default), or in etcd under a key
// prefix (OpenEtcd, for several replicas), and is the only package that
// imports bbolt or the etcd client. Both give the same *Store and the same
// contract; only the Caveats differ (see "The etcd backend").
//
// It holds identities, issued certificates, CA certificates and the active
// CA set, nodes and their pending join tokens (hashes only), revocations,
// the versions of the mesh document, and an append-only audit log. Values
// are JSON; private keys are sealed with a seal.Sealer before they are
// written, with the record's kind, identity and serial as associated data,
// so a sealed key copied to another record does not open.
//
// Secrets are kept out of the record types that are read for listing and
// status: a Cert has no key field (the key is written with PutCert and read
// only with Credential), and a Node has no token (the hash is a JoinToken
// record, read and written only with its own Tx methods).
//
// Every write goes through Store.Update, and every Update that changes a
// record must also append an audit Event in the same transaction (otherwise
// it fails with ErrNoAudit): the change and its audit record commit together
// or not at all. Audit sequence numbers are gapless, starting at 1, in commit
// order.
//
// # Change feed
//
// The feed is the only way the rest of meshca learns that the state
// changed. Subscribe returns a Subscription; its consumer calls Next on its
// own goroutine and receives a Batch: the changes (Kind and Key: identity
// NAME, node NAME, cert SERIAL, revocation SERIAL, CA, mesh VERSION, CRL) of
// every Update committed since its previous Batch, and the store's sequence
// Seq, the audit Seq of the newest commit in it. The guarantees:
//
//   - After commit: a change is queued only once its transaction is
//     durable, before the Update that made it returns; changes of an
//     Update that failed, or of a run of its function that was not the one
//     committed (group commit may run it twice), are never queued.
//   - In commit order: changes are queued in the order of their commits'
//     audit sequence, whatever order the callers of a group commit return
//     in; Seq only grows from one Batch to the next.
//   - Coalescing: a record changed several times while the consumer is
//     busy appears once in the next Batch, at the place of its first
//     change since the previous Batch.
//   - Bounded, never blocking: a subscription holds at most its limit of
//     distinct changes; one more turns the whole queue into Resync ("treat
//     everything as changed"), so memory stays bounded and the fact that
//     something changed is never lost. Queueing never blocks a writer,
//     however slow the consumer.
//   - From the moment of Subscribe: read the state after subscribing, so
//     that a change committed in between is seen twice rather than missed.
//
// A consumer must therefore be idempotent: it re-reads the records a Batch
// names (the Batch carries names, not values) and converges on the state
// it reads. The same contract can be produced from any store that orders
// its commits, e.g. an etcd watch (revision as Seq; a compacted revision
// becomes a Resync).
//
// Nothing reaches the feed but committed records: state that others derive
// and sign (the CRL) is stored like any other record (KindCRL), so that
// every process sharing the store learns of it the same way.
//
// Batch.Pos counts the commits with changes handed over, in order; FeedPos is its value now. A writer that wants to know
// when a consumer has acted on its change reads FeedPos after its write
// returned and waits until the consumer has handled a Batch with that Pos.
//
// # Caveats
//
// Update runs its function in a group commit (commit.go): concurrent callers
// share one fsync'd transaction, a lone caller commits at once, and callers
// arriving during a commit join the next one. The function may therefore run
// more than once,
// also when it returned an error, and another caller's failure can make it
// run again. It must be idempotent and must not have side effects outside the
// transaction (no channel sends, no counters, no cache updates); act on the
// result only after Update returns nil. Values assigned to variables captured
// by the function are those of the last run, which is the one committed.
//
// A *Tx and everything it returns through bbolt is only valid inside the
// function passed to Update or View. The store copies every value it decodes,
// so records returned by Tx methods may be kept, but the Tx itself must not
// be used after the function returns.
//
// Only one process may open a data directory at a time. bbolt holds an
// exclusive file lock; a second Open waits Config.LockTimeout and then fails
// with ErrLocked instead of hanging.
//
// Write transactions are serialised: a long-running Update or a long View
// (which keeps old pages alive) slows every writer. Keep transactions short
// and do slow work (key generation, signing) before calling Update.
//
// The key-encryption key is not in the database. A store opened with another
// Sealer opens but cannot open any sealed key (ErrSealed); Check reports it.
//
// # The etcd backend
//
// The typed Tx methods, the JSON encoding and the sealing are the same code
// on both backends: they run over a small transactional key-value seam (kv
// in kv.go: get, put, delete, an ordered prefix scan, and the greatest key
// of a bucket, which is the gapless audit counter). bbolt implements it on
// its buckets, unchanged on disk; etcd (etcd.go) lays the buckets out under
// the prefix P (default /meshca):
//
//	P/b/<bucket>/<key>  a record: bbolt's bucket names, keys and values
//	P/b/<bucket>/       the bucket's deletion mark, rewritten by every delete in it
//	P/last/<bucket>     the greatest key of audit and mesh (etcd has no cheap "last")
//	P/feed              what the newest commit changed, for the change feed
//	P/b/meta/kekcheck   a constant sealed with the key-encryption key
//	P/leader/<lease>    a replica standing for leader (Campaign); the oldest leads
//	P/replicas/<id>     a running replica's xDS address, on its lease (RunReplica)
//	P/acks/<id>         its count of its nodes' acknowledgements during a CA rotation, on the same lease (PutNodeAcks)
//
// Update is an optimistic transaction, with concurrency.NewSTM's contract:
// reads are taken at the revision of the first read and recorded, writes
// are buffered, and the commit is one etcd Txn that succeeds only if no key
// read and no range scanned changed since (ModRevision compares; a scan is
// a range compare, ModRevision(start).WithRange(end) < rev+1, which etcd
// has supported since 3.3; a delete also rewrites the bucket's deletion
// mark, which every scan of the bucket compares, because a range compare
// does not see removed keys). On conflict the function runs again, without
// limit until ctx ends. Appends to the audit log all read P/last/audit, so
// they serialise: Seq stays gapless in commit order across replicas. It is
// the one key every write shares (records of different identities, nodes
// or tokens share none), and it stays on purpose: Seq orders the change
// feed, is the cursor of every reader of the audit log and of CRL numbers,
// and Append returns it inside the transaction; gaplessness is how Check
// finds a lost or deleted audit record. Keys ordered by the commit's
// revision would take the counter off the write path only by giving up
// both (a revision is known after the commit, and revisions have gaps).
// Two replicas writing at once therefore conflict on it and run again
// (TestEtcdReplicasShareOnlyTheAuditSequence prints how often). A
// replica has its own group commit (etcd_commit.go): the Updates that
// arrive while a Txn is in flight share the next one (at most 16), so they
// do not conflict with each other; replicas conflict and retry. Once
// queued, an Update waits for its batch, which gives up when every caller's
// context has ended. An error from
// etcd during the commit leaves its outcome unknown; Update returns it
// rather than running the function again on state that may include it.
//
// Every read on etcd is a linearizable round trip. Tx.Prefetch reads
// several records in one (a read-only Txn, every key at the transaction's
// revision, recorded as read like any other): a caller that knows what it
// will read pays one round trip instead of one per record. On bbolt it does
// nothing.
//
// Limits: etcd refuses a Txn with more than --max-txn-ops (default 128)
// operations or compares, or larger than --max-request-bytes (default
// 1.5 MiB). A transaction whose writes exceed EtcdConfig.MaxTxnOps or
// MaxRequestBytes (defaults: etcd's) fails with ErrTooLarge before it is
// sent, and one the server refuses fails with ErrTooLarge too; nothing is
// written. (A group of Updates too large together runs each alone.) Each record write is one operation (a certificate is two: record
// and index; an audit event two: event and counter; a commit adds one for
// P/feed). Compares beyond the limit are merged into one range compare per
// bucket: more conflicts, never fewer.
//
// The change feed on etcd is a watch on P/feed from the revision the store
// opened at: every commit of every replica puts P/feed once, with the
// changes its function tracked (the same Kind, Key and Identity as bbolt's
// feed) and its audit Seq range, so the watch yields the commits of all
// replicas in commit order. Update waits (at most EtcdConfig.FeedWait) until
// its own commit came back through the watch, so that FeedPos read after it
// covers it as on bbolt. After a lost connection the client resumes the
// watch from the last revision it delivered; if etcd compacted that
// revision meanwhile, every subscriber gets a Resync and the watch goes on
// from the present. Writes made to the prefix by anything else than a
// Store (etcdctl) are not fed.
//
// Leadership: Campaign is etcd's election (concurrency.NewElection on
// P/leader, held by a session lease). An Update whose context carries the
// term's Fence (WithFence) shares its group commit only with Updates of
// the same fence, and the Txn also compares the election key's create
// revision: once the term is over (the
// lease expired during a pause or a partition, or was revoked), the
// Update fails with ErrNotLeader and writes nothing, even if the replica
// has not noticed yet. A replica that hears no renewal of its lease for
// two thirds of its TTL ends its term itself, before etcd can expire the
// lease and elect another (that bound is real time: the lease runs on
// etcd's clock, not on Config.Clock). On bbolt Campaign wins at once and
// fences are ignored: the file lock already makes one process the writer.
//
// OpenEtcd initialises an empty prefix (schema version and the KEK check)
// in one Txn that only the first replica wins; a later replica whose
// key-encryption key does not open the check record fails with
// ErrKEKMismatch. The key-encryption key is never written to etcd.
//
// MigrateToEtcd (migrate_etcd.go) fills an empty prefix from a bbolt store
// behind a marker, P/migrating, put first and removed last; OpenEtcd
// refuses a prefix holding it (ErrMigrating).
//
// Losing etcd: the etcd client waits for a connection as long as the
// caller's context allows. Ping is one bounded linearizable round trip;
// EtcdConfig.Contact lets the owner of the store (internal/app probes with
// Ping) make every Update and View fail at once while the replica is cut
// off, instead of waiting. The store also asks Contact every 100ms and,
// once it reports the loss, ends the etcd calls already in flight (a read
// of a member that lost its quorum waits otherwise) with Contact's error;
// a commit ended that way has an unknown outcome and says so.
//
// What grows, and how it is pruned (prune.go): every certificate ever
// issued (about 2 KB each with its sealed key and index entry: a leaf and
// its chain in base64 JSON), revocation records, the audit log (about 230
// to 280 bytes per event: identity.add and cert.issue 229, a renewal 276)
// and the mesh versions, on both backends. With 1h certificates renewed at
// half their life that is about 110 MB of certificates and 13 MB of audit
// per day for 1,000 identities. RunPrune, the leader's work, removes every
// hour the certificates that expired more than PruneConfig.CertRetention
// ago (default 7 days; the config file's store.cert_retention) with their
// index entries and revocation records, keeping the current certificate
// of every identity, node and agent node however old; a revoked
// certificate is therefore kept until it has left the CRL, which lists
// only unexpired ones. Each transaction removes at most 50 records and
// appends one store.prune audit event with its counts; a run that removes
// nothing writes nothing. The audit log and the mesh versions are kept:
// they are the history operators read, gapless from 1 (Check), and the
// audit log outgrows nothing else (about 13 MB a day in the example); an
// operator who must bound it exports and starts a new prefix.
//
// etcd also keeps every old revision of every key (P/feed and P/last/audit
// change on every commit) until it is compacted. Each prune run on etcd
// reads the current revision and compacts etcd's history to the newest
// revision it read at least PruneConfig.RevisionRetention ago (default 1h,
// so revisions are kept 1 to 2 hours), and audits the compaction. A
// watch or a transaction that lags further behind gets a Resync or runs
// again. A compaction is cluster-wide: meshca's is harmless next to
// etcd's own --auto-compaction-retention, whichever comes first. Neither
// returns the space to the file system: defragment now and then (etcdctl
// defrag), or the 2 GiB default quota fills.
//
// Replicas: RunReplica keeps P/replicas/<id> on a lease of
// EtcdConfig.ReplicaTTL (default 10s) and deletes it when it stops; a
// killed replica's key is gone when its lease expires. Replicas reads them
// (nodes learn the list when they join). These keys are not records: no
// audit, no feed, not migrated.
//
// Versions: the v3.7.3 client, against etcd 3.4 and later (range compares
// need 3.3). The package's tests run on an embedded 3.7.3 member; with
// MESHCA_TEST_ETCD=HOST:PORT they run against another etcd, and they pass
// on Debian's packaged 3.4.23 daemon.
package store
