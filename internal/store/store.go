package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/seal"
)

// SchemaVersion is the layout of buckets and values this build reads and
// writes. Version 2 moved join tokens out of the node records.
const SchemaVersion = 2

// FileName is the name of the database file inside the data directory.
const FileName = "meshca.db"

// Bucket names.
var (
	bucketMeta        = []byte("meta")
	bucketIdentities  = []byte("identities")
	bucketCerts       = []byte("certs")
	bucketCertsByID   = []byte("certs_by_identity")
	bucketCAs         = []byte("cas")
	bucketNodes       = []byte("nodes")
	bucketRevocations = []byte("revocations")
	bucketMesh        = []byte("mesh")
	bucketAudit       = []byte("audit")

	allBuckets = [][]byte{
		bucketMeta, bucketIdentities, bucketCerts, bucketCertsByID, bucketCAs,
		bucketNodes, bucketRevocations, bucketMesh, bucketAudit, bucketJoinTokens, bucketCRL,
		bucketAgents,
	}
)

// Keys in the meta bucket.
var (
	metaSchema = []byte("schema")
	metaCASet  = []byte("caset")
)

// Log attribute keys.
const (
	logPath   = "path"
	logSchema = "schema"
)

// Config configures Open.
type Config struct {
	Dir         string        // data directory; created with mode 0700 if missing
	Sealer      *seal.Sealer  // required: seals certificate and CA keys
	LockTimeout time.Duration // default 1s: how long Open waits for the file lock
	Clock       clock.Clock   // default clock.Real{}: fills Event.Time when zero
	Logger      *slog.Logger  // default discard
	// OnCommit, when set, is called after every successful Update with
	// the audit events it appended and how long the call took (waiting for
	// the group commit included). It runs on the caller's goroutine and
	// must be quick: metrics use it.
	OnCommit func(events []Event, took time.Duration)
	Fault    func() error // testing: when set, called at the start of every Update; a non-nil error fails it
}

// Store is meshca's state on disk. It is safe for concurrent use.
type Store struct {
	// nodesVersion grows after every commit that wrote a node.
	nodesVersion atomic.Uint64
	// localReplica is the replica registered by RunReplica on bbolt.
	localReplica atomic.Pointer[Replica]

	onCommit func([]Event, time.Duration)
	fault    func() error
	contact  func() error // etcd: EtcdConfig.Contact
	commits  committer
	feed     feed
	db       *bolt.DB
	etcd     *etcdStore // set by OpenEtcd; then commits and db are unused
	terms    localTerms // the election on bbolt
	dir      string
	path     string
	sealer   *seal.Sealer
	clock    clock.Clock
	log      *slog.Logger

	// nodeCache spares decoding a node's record read again unchanged.
	nodeCache nodeCache
}

// Open opens (creating if needed) the database in cfg.Dir. It refuses a data
// directory or database file that group or others can access, and fails with
// ErrLocked when another process holds the directory.
func Open(cfg Config) (*Store, error) {
	if cfg.Dir == "" {
		return nil, fmt.Errorf("%w: data directory not set", ErrInvalid)
	}
	if cfg.Sealer == nil {
		return nil, fmt.Errorf("%w: no sealer configured", ErrInvalid)
	}
	if cfg.LockTimeout <= 0 {
		cfg.LockTimeout = time.Second
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}

	if err := prepareDir(cfg.Dir); err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, FileName)
	if fi, err := os.Stat(path); err == nil {
		if fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("%w: %s has mode %04o; run: chmod 600 %s", ErrPermission, path, fi.Mode().Perm(), path)
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("store: %w", err)
	}

	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: cfg.LockTimeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, &lockedError{dir: cfg.Dir, timeout: cfg.LockTimeout}
	}
	if err != nil {
		return nil, fmt.Errorf("store: open %s: %w", path, err)
	}

	if err := db.Update(migrate); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	var last uint64
	if err := db.View(func(btx *bolt.Tx) error { last = (&Tx{kv: boltKV{btx}}).LastSeq(); return nil }); err != nil {
		db.Close()
		return nil, fmt.Errorf("store: %s: %w", path, err)
	}
	cfg.Logger.Info("store opened", logPath, path, logSchema, SchemaVersion)
	return &Store{
		feed:     feed{delivered: last},
		commits:  committer{db: db},
		db:       db,
		dir:      cfg.Dir,
		path:     path,
		sealer:   cfg.Sealer,
		clock:    cfg.Clock,
		log:      cfg.Logger,
		onCommit: cfg.OnCommit,
		fault:    cfg.Fault,
	}, nil
}

// prepareDir creates dir with mode 0700, or checks that an existing one is
// private: the database and the key-encryption key live in it.
func prepareDir(dir string) error {
	fi, err := os.Stat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return fmt.Errorf("store: create data directory: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("store: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%w: data directory %s is not a directory", ErrInvalid, dir)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("%w: data directory %s has mode %04o; run: chmod 700 %s", ErrPermission, dir, fi.Mode().Perm(), dir)
	}
	return nil
}

// lockedError carries the exact message operators see when two processes
// share a data directory; it matches ErrLocked with errors.Is.
type lockedError struct {
	dir     string
	timeout time.Duration
}

func (e *lockedError) Error() string {
	return fmt.Sprintf("data directory %s is in use by another meshca process (lock not acquired within %s); stop that process or choose another --data-dir", e.dir, e.timeout)
}

func (e *lockedError) Is(target error) bool { return target == ErrLocked }

// migrate checks the schema version before touching anything, so that a file
// written by a newer meshca is never modified, then creates missing buckets
// and brings a file of an older version to this one.
func migrate(btx *bolt.Tx) error {
	version := 0
	if meta := btx.Bucket(bucketMeta); meta != nil {
		if v := meta.Get(metaSchema); v != nil {
			if err := json.Unmarshal(v, &version); err != nil {
				return fmt.Errorf("%w: unreadable schema version %q", ErrSchema, v)
			}
			if version < 1 || version > SchemaVersion {
				return fmt.Errorf("%w: the database has schema version %d, this meshca supports version %d; use a newer meshca or restore a backup", ErrSchema, version, SchemaVersion)
			}
		}
	}
	for _, name := range allBuckets {
		if _, err := btx.CreateBucketIfNotExists(name); err != nil {
			return fmt.Errorf("create bucket %s: %w", name, err)
		}
	}
	if version == 1 {
		if err := migrateJoinTokens(btx); err != nil {
			return fmt.Errorf("migrate schema 1 to 2: %w", err)
		}
	}
	if version != SchemaVersion {
		v, _ := json.Marshal(SchemaVersion)
		return btx.Bucket(bucketMeta).Put(metaSchema, v)
	}
	return nil
}

// Close releases the file lock and closes the database. Calls to Update and
// View after Close fail with ErrClosed.
func (s *Store) Close() error {
	if s.etcd != nil {
		return s.etcd.close()
	}
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("store: close: %w", err)
	}
	return nil
}

// Path returns the path of the database file: <Dir>/meshca.db ("" on etcd).
func (s *Store) Path() string { return s.path }

// Update runs fn in a read-write transaction shared with concurrent callers:
// they share one fsync'd commit (group commit, see committer). fn may run more
// than once and must be idempotent (no side effects outside tx). If fn wrote
// anything (any Put*/Insert*/Delete*/AppendMesh call) but appended no audit
// Event with tx.Append, Update fails with ErrNoAudit and nothing is written.
// An error returned by fn is returned as is and nothing is written.
// ctx is checked before the transaction starts.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.fault != nil {
		if err := s.fault(); err != nil {
			return fmt.Errorf("store: %w", err)
		}
	}
	if err := s.inContact(); err != nil {
		return err
	}
	start := s.clock.Now()
	var (
		c   commit
		err error
	)
	if s.etcd != nil {
		c, err = s.etcd.update(ctx, func(k kv) (commit, error) { return s.attempt(k, fn) })
	} else {
		err = s.commits.run(func(btx *bolt.Tx) error {
			var err error
			c, err = s.attempt(boltKV{btx}, fn)
			return err
		})
	}
	// Before the feed hands the commit over: a subscriber that sees it
	// sees the new NodesVersion too.
	if err == nil && c.nodes {
		s.nodesVersion.Add(1)
	}
	if s.etcd == nil && err == nil && len(c.events) > 0 {
		s.feed.committed(c.events[0].Seq, c.events[len(c.events)-1].Seq, c.changes)
	}
	if err == nil && s.onCommit != nil {
		s.onCommit(c.events, s.clock.Now().Sub(start))
	}
	return mapClosed(err)
}

// commit is what one successful run of an Update's function wrote.
type commit struct {
	events  []Event  // audit events appended
	nodes   bool     // a node was written or deleted
	changes []Change // for the feed
}

// attempt runs fn once on k. A fresh Tx per run: the wrote/appended flags
// belong to this run of fn only, even when the transaction is shared with
// other callers. A read error wins over whatever fn made of the read.
func (s *Store) attempt(k kv, fn func(*Tx) error) (commit, error) {
	tx := &Tx{kv: k, s: s, writable: true}
	err := fn(tx)
	if tx.err != nil {
		return commit{}, tx.err
	}
	if err != nil {
		return commit{}, err
	}
	if tx.wrote && !tx.appended {
		return commit{}, ErrNoAudit
	}
	return commit{events: tx.events, nodes: tx.nodes, changes: tx.changes}, nil
}

// read runs fn once on k in a read-only Tx.
func (s *Store) read(k kv, fn func(*Tx) error) error {
	tx := &Tx{kv: k, s: s}
	err := fn(tx)
	if tx.err != nil {
		return tx.err
	}
	return err
}

// NodesVersion changes after every committed Update that wrote or deleted a
// node, before that Update returns: a cache of nodes read after it changed
// can be trusted until it changes again.
func (s *Store) NodesVersion() uint64 { return s.nodesVersion.Load() }

// View runs fn in a read-only transaction; write methods on tx then return
// ErrReadOnly. ctx is checked before the transaction starts.
func (s *Store) View(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.etcd != nil {
		if err := s.inContact(); err != nil {
			return err
		}
		return s.etcd.view(ctx, func(k kv) error { return s.read(k, fn) })
	}
	err := s.db.View(func(btx *bolt.Tx) error { return s.read(boltKV{btx}, fn) })
	return mapClosed(err)
}

// Append records one audit event on its own (denials, failures) via Update
// and returns it as stored, with Seq and Time set.
func (s *Store) Append(ctx context.Context, ev Event) (Event, error) {
	var out Event
	err := s.Update(ctx, func(tx *Tx) error {
		var err error
		out, err = tx.Append(ev)
		return err
	})
	if err != nil {
		return Event{}, err
	}
	return out, nil
}

func mapClosed(err error) error {
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}
