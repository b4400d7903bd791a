// Package store keeps all of meshca's state in one bbolt file,
// <data-dir>/meshca.db, and is the only package that imports bbolt.
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
package store
