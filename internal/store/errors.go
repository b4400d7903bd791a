package store

import "errors"

// Errors returned by lookups and writes.
var (
	// ErrNotFound means the record does not exist.
	ErrNotFound = errors.New("store: not found")
	// ErrExists means an insert found a record with the same key.
	ErrExists = errors.New("store: already exists")
	// ErrInvalid means a record is missing its key field or has a malformed
	// one (an empty name or serial, a NUL byte in an identity name).
	ErrInvalid = errors.New("store: invalid record")
)

// Errors returned by transactions.
var (
	// ErrNoAudit means an Update changed records without appending an audit
	// Event; nothing was written.
	ErrNoAudit = errors.New("store: update wrote records without an audit event")
	// ErrReadOnly means a write method was called inside View.
	ErrReadOnly = errors.New("store: write in a read-only transaction")
	// ErrClosed means the Store was used after Close.
	ErrClosed = errors.New("store: closed")
)

// Errors returned by Open and Check.
var (
	// ErrLocked means another process holds the data directory's lock.
	ErrLocked = errors.New("store: data directory is in use by another process")
	// ErrSchema means the file's schema version is not one this build can use.
	ErrSchema = errors.New("store: unsupported schema version")
	// ErrPermission means the data directory or database file is accessible
	// to group or others.
	ErrPermission = errors.New("store: permissions are too open")
	// ErrSealed means a sealed private key did not open: wrong
	// key-encryption key, or the record was altered or moved.
	ErrSealed = errors.New("store: sealed key does not open")
)

// Errors of the etcd backend.
var (
	// ErrKEKMismatch means the key-encryption key given to OpenEtcd is not
	// the one the records under the prefix were sealed with.
	ErrKEKMismatch = errors.New("store: key-encryption key does not match the one the etcd data was sealed with")
	// ErrTooLarge means a transaction exceeds etcd's limits on operations
	// or request size; nothing was written.
	ErrTooLarge = errors.New("store: transaction too large for etcd")
	// ErrMigrating means a migration into the etcd prefix has not
	// finished: it is running, or it failed and left its marker.
	ErrMigrating = errors.New("store: a migration into this etcd prefix has not finished (run meshca store migrate again: it cleans a failed one)")
	// ErrNotEmpty means a migration found records under its etcd prefix.
	ErrNotEmpty = errors.New("store: the etcd prefix is not empty")
)

// Errors of leadership.
var (
	// ErrNotLeader means an Update made with a Fence found that the term
	// it stands for has ended (another replica leads, or none does);
	// nothing was written.
	ErrNotLeader = errors.New("store: this replica is no longer the leader")
)

// Errors of replica registration.
var (
	// ErrNotRegistered means a replica's registration is not in place in
	// this process (RunReplica has not registered it yet, or lost it and
	// registers again): nothing tied to it can be written.
	ErrNotRegistered = errors.New("store: replica not registered")
)
