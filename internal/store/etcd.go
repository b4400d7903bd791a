package store

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/seal"
)

// Defaults of EtcdConfig.
const (
	DefaultEtcdPrefix      = "/meshca"
	DefaultEtcdDialTimeout = 5 * time.Second
	// DefaultEtcdMaxTxnOps and DefaultEtcdMaxRequestBytes are etcd's own
	// defaults for --max-txn-ops and --max-request-bytes.
	DefaultEtcdMaxTxnOps       = 128
	DefaultEtcdMaxRequestBytes = 3 * 512 * 1024
	defaultEtcdFeedWait        = 5 * time.Second
)

// EtcdConfig configures OpenEtcd.
type EtcdConfig struct {
	Endpoints   []string      // required: HOST:PORT of etcd members
	Prefix      string        // default DefaultEtcdPrefix: every key of the store starts with it
	TLS         EtcdTLS       // all empty: plain TCP
	DialTimeout time.Duration // default DefaultEtcdDialTimeout: bounds connecting and the first read
	Sealer      *seal.Sealer  // required: seals Cert.Key and CA.Key; must be the one the prefix was initialised with
	Clock       clock.Clock   // default clock.Real{}
	Logger      *slog.Logger  // default discard
	OnCommit    func(events []Event, took time.Duration)
	Fault       func() error
	// Contact, when set, is called before every Update and View; a
	// non-nil error fails it at once, returned as it is. The owner of the
	// store reports with it that this replica has lost etcd (see Ping),
	// so that callers fail fast instead of waiting for etcd.
	Contact func() error
	// MaxTxnOps and MaxRequestBytes must not exceed the server's
	// --max-txn-ops and --max-request-bytes (defaults 128 and 1.5 MiB): a
	// transaction beyond them fails with ErrTooLarge before it is sent.
	MaxTxnOps       int
	MaxRequestBytes int
	// FeedWait bounds how long Update waits, after its commit, for the
	// commit to come back through the watch (default 5s); see Store.FeedPos.
	FeedWait time.Duration
	// ReplicaTTL is the lease of RunReplica's registration (default
	// DefaultReplicaTTL; whole seconds, at least one).
	ReplicaTTL time.Duration
}

// EtcdTLS names the PEM files for TLS to etcd: CA verifies the members'
// certificates; Cert and Key are meshca's client certificate, when etcd
// asks for one (--client-cert-auth).
type EtcdTLS struct {
	CA   string
	Cert string
	Key  string
}

// Keys of the etcd layout, under the prefix P:
//
//	P/b/<bucket>/<key>  a record: the same bucket names, keys and JSON values as bbolt
//	P/b/<bucket>/       the bucket's deletion mark, rewritten by every delete in it
//	P/last/<bucket>     the greatest key of an append-only bucket (audit, mesh)
//	P/feed              the changes of the newest commit, watched by every replica
//	P/b/meta/kekcheck   a constant sealed with the key-encryption key
//	P/leader/<lease>    a replica standing for leader (etcd_elect.go)
//	P/replicas/<id>     a replica's registration, on its lease (replicas.go)
//	P/acks/<id>         its count of its nodes' acknowledgements, on the same lease (acks.go)
const (
	etcdKEKCheckPlain = "meshca key-encryption key check"
	etcdKEKCheckAAD   = "kekcheck"
	etcdPageSize      = 512
)

// Log attribute keys of the etcd backend.
const (
	logEtcdPrefix = "etcd_prefix"
	logRevision   = "revision"
	logCompacted  = "compacted_revision"
	logErr        = "err"
)

var (
	metaKEKCheck = []byte("kekcheck")
	// lastCounted are the buckets whose greatest key is kept in P/last/:
	// the ones read with kv.last, which etcd cannot answer cheaply.
	lastCounted = map[string]bool{string(bucketAudit): true, string(bucketMesh): true}
)

// errConflict means the transaction read something another commit changed
// since: it runs again.
var errConflict = errors.New("store: etcd transaction conflict")

// etcdStore is the etcd side of a Store.
type etcdStore struct {
	cli      *clientv3.Client
	prefix   string
	maxOps   int
	maxBytes int
	feedWait time.Duration
	clock    clock.Clock
	log      *slog.Logger

	replicaTTL time.Duration // the lease of a replica's registration
	leases     sync.Map      // replica ID -> clientv3.LeaseID of its registration, while in place
	contact    *contactLoss  // ends the calls in flight when Contact reports etcd lost
	followed   chan struct{} // closed when contact is no longer followed
	compaction compaction    // the revisions Prune read, for compacting

	// The group commit (etcd_commit.go): Updates waiting for a batch.
	// Batching also keeps a replica's own Updates from conflicting on the
	// audit counter; replicas still conflict with each other and retry.
	qmu     sync.Mutex
	queue   []*etcdPending
	leading bool

	txns   atomic.Uint64   // etcd transactions committed, for tests
	ctx    context.Context // ends at Close
	closed atomic.Bool
	cancel context.CancelFunc
	done   chan struct{} // closed when the watcher has stopped

	mu       sync.Mutex
	rev      int64         // the newest revision of P/feed the watcher handed over
	advanced chan struct{} // closed and replaced whenever rev grows
}

// OpenEtcd opens the store kept in etcd under cfg.Prefix. The first meshca
// on an empty prefix initialises it (schema version and a check record
// sealed with cfg.Sealer); later ones join, and fail with ErrKEKMismatch
// when their key-encryption key is not the one the data was sealed with.
// The returned Store behaves as one opened with Open; Path is "".
func OpenEtcd(cfg EtcdConfig) (*Store, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, fmt.Errorf("%w: no etcd endpoints configured", ErrInvalid)
	}
	if cfg.Sealer == nil {
		return nil, fmt.Errorf("%w: no sealer configured", ErrInvalid)
	}
	cfg, prefix, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	cli, err := cfg.client()
	if err != nil {
		return nil, err
	}
	e := &etcdStore{
		cli:      cli,
		prefix:   prefix,
		maxOps:   cfg.MaxTxnOps,
		maxBytes: cfg.MaxRequestBytes,
		feedWait: cfg.FeedWait,
		clock:    cfg.Clock,
		log:      cfg.Logger,
		done:     make(chan struct{}),
		advanced: make(chan struct{}),
	}
	e.replicaTTL = cfg.ReplicaTTL
	e.contact, e.followed = newContactLoss(cfg.Contact), make(chan struct{})
	ctx, cancel := context.WithTimeout(context.Background(), cfg.DialTimeout)
	defer cancel()
	if err := e.initialise(ctx, cfg.Sealer); err != nil {
		cli.Close()
		return nil, err
	}
	seq, rev, err := e.lastSeq(ctx, 0)
	if err != nil {
		cli.Close()
		return nil, fmt.Errorf("store: etcd %s: %w", prefix, err)
	}
	s := &Store{
		feed:     feed{delivered: seq},
		etcd:     e,
		sealer:   cfg.Sealer,
		clock:    cfg.Clock,
		log:      cfg.Logger,
		onCommit: cfg.OnCommit,
		fault:    cfg.Fault,
		contact:  cfg.Contact,
	}
	e.rev = rev
	e.ctx, e.cancel = context.WithCancel(context.Background())
	go e.watch(e.ctx, s, rev+1)
	go e.contact.follow(e.ctx, e.followed)
	cfg.Logger.Info("store opened", logEtcdPrefix, prefix, logSchema, SchemaVersion)
	return s, nil
}

// withDefaults fills cfg's defaults and returns the prefix without its
// trailing slashes.
func (cfg EtcdConfig) withDefaults() (EtcdConfig, string, error) {
	prefix := strings.TrimRight(cfg.Prefix, "/")
	if cfg.Prefix == "" {
		prefix = DefaultEtcdPrefix
	}
	if prefix == "" || strings.IndexByte(prefix, 0) >= 0 {
		return cfg, "", fmt.Errorf("%w: etcd prefix %q; use a path such as %s", ErrInvalid, cfg.Prefix, DefaultEtcdPrefix)
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = DefaultEtcdDialTimeout
	}
	if cfg.MaxTxnOps <= 0 {
		cfg.MaxTxnOps = DefaultEtcdMaxTxnOps
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultEtcdMaxRequestBytes
	}
	if cfg.FeedWait <= 0 {
		cfg.FeedWait = defaultEtcdFeedWait
	}
	if cfg.ReplicaTTL <= 0 {
		cfg.ReplicaTTL = DefaultReplicaTTL
	}
	cfg.ReplicaTTL = max(cfg.ReplicaTTL.Round(time.Second), time.Second)
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return cfg, prefix, nil
}

// client connects to cfg's endpoints.
func (cfg EtcdConfig) client() (*clientv3.Client, error) {
	tlsCfg, err := cfg.TLS.config()
	if err != nil {
		return nil, err
	}
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   cfg.Endpoints,
		DialTimeout: cfg.DialTimeout,
		TLS:         tlsCfg,
		Logger:      zap.NewNop(),
		// Let the server, not the client's 2 MiB default, judge a request
		// up to the configured limit.
		MaxCallSendMsgSize: cfg.MaxRequestBytes + 64<<10,
	})
	if err != nil {
		return nil, fmt.Errorf("store: etcd client for %s: %w", strings.Join(cfg.Endpoints, ","), err)
	}
	return cli, nil
}

func (t EtcdTLS) config() (*tls.Config, error) {
	if t == (EtcdTLS{}) {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("store: etcd CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: etcd CA file %s holds no PEM certificate", ErrInvalid, t.CA)
		}
		cfg.RootCAs = pool
	}
	if (t.Cert == "") != (t.Key == "") {
		return nil, fmt.Errorf("%w: etcd TLS needs both a client certificate and its key, or neither", ErrInvalid)
	}
	if t.Cert != "" {
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			// The error of LoadX509KeyPair names files, never key bytes.
			return nil, fmt.Errorf("store: etcd client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	return cfg, nil
}

func (e *etcdStore) bucketPrefix(bucket []byte) string {
	return e.prefix + "/b/" + string(bucket) + "/"
}
func (e *etcdStore) key(bucket, key []byte) string { return e.bucketPrefix(bucket) + string(key) }
func (e *etcdStore) lastKey(bucket []byte) string  { return e.prefix + "/last/" + string(bucket) }
func (e *etcdStore) feedKey() string               { return e.prefix + "/feed" }

// initialise writes the schema version and the KEK check on an empty
// prefix, in one transaction that only the first replica wins, or checks
// them.
func (e *etcdStore) initialise(ctx context.Context, sealer *seal.Sealer) error {
	schemaKey := e.key(bucketMeta, metaSchema)
	checkKey := e.key(bucketMeta, metaKEKCheck)
	sealed, err := sealer.Seal([]byte(etcdKEKCheckPlain), []byte(etcdKEKCheckAAD))
	if err != nil {
		return fmt.Errorf("store: seal kek check: %w", err)
	}
	version, _ := json.Marshal(SchemaVersion)
	resp, err := e.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.CreateRevision(schemaKey), "=", 0), clientv3.Compare(clientv3.CreateRevision(e.migratingKey()), "=", 0)).
		Then(clientv3.OpPut(schemaKey, string(version)), clientv3.OpPut(checkKey, string(sealed))).
		Else(clientv3.OpGet(schemaKey), clientv3.OpGet(checkKey), clientv3.OpGet(e.migratingKey())).
		Commit()
	if err != nil {
		return fmt.Errorf("store: etcd at %s: %w; check the endpoints and that etcd is running", strings.Join(e.cli.Endpoints(), ","), err)
	}
	if resp.Succeeded {
		e.log.Info("etcd prefix initialised", logEtcdPrefix, e.prefix)
		return nil
	}
	if len(resp.Responses[2].GetResponseRange().Kvs) > 0 {
		return fmt.Errorf("%w: %s", ErrMigrating, e.prefix)
	}
	got := resp.Responses[0].GetResponseRange().Kvs
	var v int
	if err := json.Unmarshal(got[0].Value, &v); err != nil {
		return fmt.Errorf("%w: unreadable schema version %q under %s", ErrSchema, got[0].Value, e.prefix)
	}
	if v < 1 || v > SchemaVersion {
		return fmt.Errorf("%w: the data under %s has schema version %d, this meshca supports version %d; use a newer meshca", ErrSchema, e.prefix, v, SchemaVersion)
	}
	check := resp.Responses[1].GetResponseRange().Kvs
	if len(check) == 0 {
		return fmt.Errorf("%w: no key-encryption key check under %s", ErrSchema, e.prefix)
	}
	if _, err := sealer.Open(check[0].Value, []byte(etcdKEKCheckAAD)); err != nil {
		return fmt.Errorf("%w (prefix %s): give this replica the kek file of the replicas that initialised it", ErrKEKMismatch, e.prefix)
	}
	return nil
}

// lastSeq reads the newest audit Seq at rev (0: now) and the revision read.
func (e *etcdStore) lastSeq(ctx context.Context, rev int64) (uint64, int64, error) {
	var opts []clientv3.OpOption
	if rev > 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	resp, err := e.cli.Get(ctx, e.lastKey(bucketAudit), opts...)
	if err != nil {
		return 0, 0, err
	}
	if len(resp.Kvs) == 0 || len(resp.Kvs[0].Value) != 8 {
		return 0, resp.Header.Revision, nil
	}
	return binary.BigEndian.Uint64(resp.Kvs[0].Value), resp.Header.Revision, nil
}

func (e *etcdStore) close() error {
	if e.closed.Swap(true) {
		return nil
	}
	e.cancel()
	<-e.done
	<-e.followed
	if err := e.cli.Close(); err != nil && !errors.Is(err, context.Canceled) {
		return fmt.Errorf("store: close etcd client: %w", err)
	}
	return nil
}

// commitLoop runs run in optimistic transactions until one commits: reads
// are taken at one revision, writes are buffered, and the commit is a
// single etcd Txn that succeeds only if nothing read changed since that
// revision (as concurrency.NewSTM, plus range compares for scans). It
// returns what the committed run returned, and the revision of the commit
// if it appended audit events (0 otherwise).
func (e *etcdStore) commitLoop(ctx context.Context, run func(*etcdTx) ([]commit, error)) ([]commit, int64, error) {
	for {
		if e.closed.Load() {
			return nil, 0, ErrClosed
		}
		if err := ctx.Err(); err != nil {
			return nil, 0, err
		}
		t := &etcdTx{ctx: ctx, e: e, writable: true}
		t.fence, _ = fenceOf(ctx)
		cs, err := run(t)
		if errors.Is(err, errConflict) {
			continue
		}
		if err != nil {
			return nil, 0, err
		}
		if len(t.writes) == 0 {
			return cs, 0, nil
		}
		var all commit
		for _, c := range cs {
			all.events = append(all.events, c.events...)
			all.changes = append(all.changes, c.changes...)
		}
		rev, ok, err := t.commit(all)
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			continue
		}
		e.txns.Add(1)
		if len(all.events) == 0 {
			rev = 0
		}
		return cs, rev, nil
	}
}

func (e *etcdStore) view(ctx context.Context, fn func(kv) error) error {
	if e.closed.Load() {
		return ErrClosed
	}
	return fn(&etcdTx{ctx: ctx, e: e})
}

// etcdTx is kv on etcd: reads at one revision, writes buffered until
// commit.
type etcdTx struct {
	ctx      context.Context
	e        *etcdStore
	writable bool
	rev      int64               // the revision of every read; 0 before the first
	reads    map[string]struct{} // keys read
	ranges   [][2]string         // key ranges [start, end) scanned
	writes   map[string]etcdWrite
	lasts    map[string][]byte // bucket -> its greatest key, once read or written
	fetched  map[string][]byte // key -> value read by prefetch (nil: absent)
	fence    Fence             // the commit also requires this term; zero: unfenced
}

type etcdWrite struct {
	val []byte
	del bool
}

var _ kv = (*etcdTx)(nil)

func (t *etcdTx) fetch(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if t.rev > 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	ctx, release := t.e.contact.bound(t.ctx)
	resp, err := t.e.cli.Get(ctx, key, opts...)
	release()
	if errors.Is(err, rpctypes.ErrCompacted) {
		return nil, errConflict
	}
	if cerr := t.e.contact.failed(err); cerr != nil {
		return nil, cerr
	}
	if err != nil {
		return nil, fmt.Errorf("etcd read failed (endpoints %s; is etcd reachable?): %w", strings.Join(t.e.cli.Endpoints(), ","), err)
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

func (t *etcdTx) noteRead(key string) {
	if t.reads == nil {
		t.reads = map[string]struct{}{}
	}
	t.reads[key] = struct{}{}
}

func (t *etcdTx) getKey(key string) ([]byte, error) {
	if w, ok := t.writes[key]; ok {
		if w.del {
			return nil, nil
		}
		return w.val, nil
	}
	if v, ok := t.fetched[key]; ok {
		return v, nil
	}
	resp, err := t.fetch(key)
	if err != nil {
		return nil, err
	}
	t.noteRead(key)
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	return resp.Kvs[0].Value, nil
}

func (t *etcdTx) get(bucket, key []byte) ([]byte, error) { return t.getKey(t.e.key(bucket, key)) }

func (t *etcdTx) write(key string, w etcdWrite) error {
	if !t.writable {
		return ErrReadOnly
	}
	if t.writes == nil {
		t.writes = map[string]etcdWrite{}
	}
	t.writes[key] = w
	return nil
}

func (t *etcdTx) put(bucket, key, val []byte) error {
	if len(key) == 0 {
		return fmt.Errorf("%w: empty key in %s", ErrInvalid, bucket)
	}
	if lastCounted[string(bucket)] {
		last, err := t.lastOf(bucket)
		if err != nil {
			return err
		}
		if string(key) > string(last) {
			t.lasts[string(bucket)] = key
			if err := t.write(t.e.lastKey(bucket), etcdWrite{val: key}); err != nil {
				return err
			}
		}
	}
	return t.write(t.e.key(bucket, key), etcdWrite{val: val})
}

// del also rewrites the bucket's deletion mark, which every scan of the
// bucket compares: a range compare sees changed and added keys, not
// removed ones.
func (t *etcdTx) del(bucket, key []byte) error {
	if err := t.write(t.e.key(bucket, key), etcdWrite{del: true}); err != nil {
		return err
	}
	return t.write(t.e.bucketPrefix(bucket), etcdWrite{val: nil})
}

// lastOf returns the greatest key of a counted bucket as P/last/ holds it.
func (t *etcdTx) lastOf(bucket []byte) ([]byte, error) {
	if k, ok := t.lasts[string(bucket)]; ok {
		return k, nil
	}
	k, err := t.getKey(t.e.lastKey(bucket))
	if err != nil {
		return nil, err
	}
	if t.lasts == nil {
		t.lasts = map[string][]byte{}
	}
	t.lasts[string(bucket)] = k
	return k, nil
}

func (t *etcdTx) last(bucket []byte) ([]byte, []byte, error) {
	if lastCounted[string(bucket)] {
		k, err := t.lastOf(bucket)
		if err != nil || k == nil {
			return nil, nil, err
		}
		v, err := t.get(bucket, k)
		if err != nil {
			return nil, nil, err
		}
		if v != nil {
			return k, v, nil
		}
		// The counted key was deleted: fall back to a scan.
	}
	var lk, lv []byte
	err := t.scan(bucket, nil, nil, func(k, v []byte) bool {
		lk, lv = k, v
		return true
	})
	return lk, lv, err
}

func (t *etcdTx) scan(bucket, prefix, from []byte, fn func(k, v []byte) bool) error {
	bp := t.e.bucketPrefix(bucket)
	start := bp + string(prefix)
	if string(from) > string(prefix) {
		start = bp + string(from)
	}
	end := clientv3.GetPrefixRangeEnd(bp + string(prefix))
	// The deletion mark: a delete anywhere in the bucket fails this
	// transaction's commit.
	if _, err := t.getKey(bp); err != nil {
		return err
	}
	pending := t.pendingIn(start, end)
	cur := start
	for {
		opts := []clientv3.OpOption{clientv3.WithRange(end)}
		if len(pending) == 0 {
			opts = append(opts, clientv3.WithLimit(etcdPageSize))
		}
		resp, err := t.fetch(cur, opts...)
		if err != nil {
			return err
		}
		kvs := make([][2][]byte, 0, len(resp.Kvs))
		for _, p := range resp.Kvs {
			kvs = append(kvs, [2][]byte{p.Key, p.Value})
		}
		if len(pending) > 0 {
			kvs = overlay(kvs, pending)
		}
		for _, p := range kvs {
			k := p[0][len(bp):]
			if len(k) == 0 {
				continue // the deletion mark
			}
			if !fn(k, p[1]) {
				t.ranges = append(t.ranges, [2]string{start, string(p[0]) + "\x00"})
				return nil
			}
		}
		if len(pending) > 0 || !resp.More {
			t.ranges = append(t.ranges, [2]string{start, end})
			return nil
		}
		cur = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
	}
}

// pendingIn returns the buffered writes with keys in [start, end).
func (t *etcdTx) pendingIn(start, end string) map[string]etcdWrite {
	var out map[string]etcdWrite
	for k, w := range t.writes {
		if k >= start && k < end {
			if out == nil {
				out = map[string]etcdWrite{}
			}
			out[k] = w
		}
	}
	return out
}

// overlay applies buffered writes to sorted key-value pairs read from etcd.
func overlay(kvs [][2][]byte, writes map[string]etcdWrite) [][2][]byte {
	m := make(map[string][]byte, len(kvs)+len(writes))
	for _, p := range kvs {
		m[string(p[0])] = p[1]
	}
	for k, w := range writes {
		if w.del {
			delete(m, k)
		} else {
			m[k] = w.val
		}
	}
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sortStrings(keys)
	out := make([][2][]byte, 0, len(keys))
	for _, k := range keys {
		out = append(out, [2][]byte{[]byte(k), m[k]})
	}
	return out
}

// feedRecord is the value of P/feed: what one commit changed.
type feedRecord struct {
	First   uint64   `json:"first"`
	Last    uint64   `json:"last"`
	Changes []Change `json:"changes,omitempty"`
}

// commit sends the transaction as one etcd Txn. ok is false when something
// read changed since (run again). A transaction beyond etcd's limits fails
// with ErrTooLarge before anything is sent. An error from etcd leaves the
// outcome unknown, so it is returned rather than retried: running fn again
// could find its own first commit.
func (t *etcdTx) commit(c commit) (rev int64, ok bool, err error) {
	keys := sortedKeys(t.writes)
	ops := make([]clientv3.Op, 0, len(keys)+1)
	size := 0
	for _, k := range keys {
		w := t.writes[k]
		if w.del {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, string(w.val)))
		}
		size += len(k) + len(w.val) + 16
	}
	if len(c.events) > 0 {
		rec, err := json.Marshal(feedRecord{First: c.events[0].Seq, Last: c.events[len(c.events)-1].Seq, Changes: c.changes})
		if err != nil {
			return 0, false, fmt.Errorf("store: encode feed record: %w", err)
		}
		ops = append(ops, clientv3.OpPut(t.e.feedKey(), string(rec)))
		size += len(t.e.feedKey()) + len(rec) + 16
	}
	if len(ops) > t.e.maxOps {
		return 0, false, fmt.Errorf("%w: %d writes, etcd allows %d in one transaction (--max-txn-ops); write fewer records per update, or raise the server's limit and the store's MaxTxnOps", ErrTooLarge, len(ops), t.e.maxOps)
	}
	cmps := t.compares()
	for _, cmp := range cmps {
		size += len(cmp.GetCompare().GetKey()) + len(cmp.GetCompare().GetRangeEnd()) + 16
	}
	if size > t.e.maxBytes {
		return 0, false, fmt.Errorf("%w: about %d bytes, etcd accepts %d per request (--max-request-bytes); keep records small, or raise the server's limit and the store's MaxRequestBytes", ErrTooLarge, size, t.e.maxBytes)
	}
	var orElse []clientv3.Op
	if t.fence.key != "" {
		// The term's election key still exists with the create revision
		// it had when elected; if not, the Else tells which failed.
		cmps = append(cmps, clientv3.Compare(clientv3.CreateRevision(t.fence.key), "=", t.fence.rev))
		orElse = append(orElse, clientv3.OpGet(t.fence.key))
	}
	ctx, release := t.e.contact.bound(t.ctx)
	resp, err := t.e.cli.Txn(ctx).If(cmps...).Then(ops...).Else(orElse...).Commit()
	release()
	if cerr := t.e.contact.failed(err); cerr != nil {
		return 0, false, fmt.Errorf("%w (the outcome of this write is unknown: it may have been committed)", cerr)
	}
	if err != nil {
		if errors.Is(err, rpctypes.ErrTooManyOps) || errors.Is(err, rpctypes.ErrRequestTooLarge) || status.Code(err) == codes.ResourceExhausted {
			return 0, false, fmt.Errorf("%w: etcd refused it (%w); write fewer or smaller records per update, or raise the server's --max-txn-ops/--max-request-bytes and the store's limits", ErrTooLarge, err)
		}
		return 0, false, fmt.Errorf("store: etcd commit (outcome unknown): %w", err)
	}
	if !resp.Succeeded && t.fence.key != "" {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		if len(kvs) == 0 || kvs[0].CreateRevision != t.fence.rev {
			return 0, false, fmt.Errorf("%w: its term (election key %s) has ended; nothing was written", ErrNotLeader, t.fence.key)
		}
	}
	return resp.Header.Revision, resp.Succeeded, nil
}

// compares are the conditions of the commit: every key read and every
// range scanned is unchanged since t.rev. When they are more than etcd
// takes in one transaction, they are merged into one range compare per
// top-level part of the layout (P/b/<bucket>/, P/last/...): more conflicts,
// never fewer.
func (t *etcdTx) compares() []clientv3.Cmp {
	if t.rev == 0 {
		return nil
	}
	type rng struct{ start, end string }
	var all []rng
	for _, k := range sortedKeys(t.reads) {
		all = append(all, rng{k, ""})
	}
	for _, r := range t.ranges {
		all = append(all, rng{r[0], r[1]})
	}
	limit := t.e.maxOps
	if t.fence.key != "" {
		limit-- // the fence's compare
	}
	if len(all) > limit {
		groups := map[string]bool{}
		for _, r := range all {
			groups[t.e.group(r.start)] = true
		}
		all = all[:0]
		for _, g := range sortedKeys(groups) {
			all = append(all, rng{g, clientv3.GetPrefixRangeEnd(g)})
		}
	}
	cmps := make([]clientv3.Cmp, 0, len(all))
	for _, r := range all {
		cmp := clientv3.ModRevision(r.start)
		if r.end != "" {
			cmp = cmp.WithRange(r.end)
		}
		cmps = append(cmps, clientv3.Compare(cmp, "<", t.rev+1))
	}
	return cmps
}

// group returns the part of the layout key belongs to: P/b/<bucket>/ for
// records, P/last/ and so on for the rest.
func (e *etcdStore) group(key string) string {
	rest := strings.TrimPrefix(key, e.prefix+"/")
	if strings.HasPrefix(rest, "b/") {
		if i := strings.IndexByte(rest[2:], '/'); i >= 0 {
			return e.prefix + "/" + rest[:2+i+1]
		}
	}
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		return e.prefix + "/" + rest[:i+1]
	}
	return key
}

// waitFeed waits until the watcher handed over rev, so that FeedPos read
// after Update covers it, as on bbolt. The commit is made: after FeedWait,
// or when ctx ends, Update returns all the same.
func (e *etcdStore) waitFeed(ctx context.Context, rev int64) {
	var timeout <-chan time.Time
	for {
		e.mu.Lock()
		done, ch := e.rev >= rev, e.advanced
		e.mu.Unlock()
		if done {
			return
		}
		if timeout == nil {
			timeout = e.clock.After(e.feedWait)
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return
		case <-e.done: // closed: nothing more comes through the watch
			return
		case <-timeout:
			e.log.Warn("etcd watch is behind the commit", logRevision, rev)
			return
		}
	}
}

// advance records that the watcher handed over everything up to rev.
func (e *etcdStore) advance(rev int64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if rev <= e.rev {
		return
	}
	e.rev = rev
	close(e.advanced)
	e.advanced = make(chan struct{})
}

// checkLasts verifies that P/last/ names the greatest key of every counted
// bucket, for Store.Check.
func (t *etcdTx) checkLasts() []error {
	var problems []error
	for _, bucket := range sortedKeys(lastCounted) {
		var greatest []byte
		err := t.scan([]byte(bucket), nil, nil, func(k, _ []byte) bool {
			greatest = k
			return true
		})
		if err != nil {
			problems = append(problems, fmt.Errorf("last key of %s: %w", bucket, err))
			continue
		}
		counted, err := t.lastOf([]byte(bucket))
		if err != nil {
			problems = append(problems, fmt.Errorf("last key of %s: %w", bucket, err))
		} else if string(counted) != string(greatest) {
			problems = append(problems, fmt.Errorf("last key of %s: counter says %x, greatest key is %x", bucket, counted, greatest))
		}
	}
	return problems
}
