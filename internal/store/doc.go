// Package store keeps all of meshca's state in one bbolt file,
// <data-dir>/meshca.db, and is the only package that imports bbolt.
//
// It holds identities, issued certificates, CA certificates and the active
// CA set, nodes, revocations, the versions of the mesh document, and an
// append-only audit log. Values are JSON; private keys are sealed with a
// seal.Sealer before they are written, with the record's kind, identity and
// serial as associated data, so a sealed key copied to another record does
// not open.
//
// Every write goes through Store.Update, and every Update that changes a
// record must also append an audit Event in the same transaction (otherwise
// it fails with ErrNoAudit): the change and its audit record commit together
// or not at all. Audit sequence numbers are gapless, starting at 1, in commit
// order.
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
