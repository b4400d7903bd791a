package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"
)

// Tx is one transaction, passed to the function given to Store.Update or
// Store.View. It is only valid inside that function.
type Tx struct {
	kv       kv
	err      error // the first read error of a method that cannot return one
	s        *Store
	writable bool
	wrote    bool     // a record was changed in this run of fn
	appended bool     // an audit event was appended in this run of fn
	events   []Event  // the events appended in this run of fn
	nodes    bool     // a node was written or deleted in this run of fn
	changes  []Change // what this run of fn changed, for the feed
}

// On-disk forms of the records that hold keys. Cert has no key and CA.Key
// is `json:"-"`, so only the sealed bytes reach the file.
type certRecord struct {
	Cert
	SealedKey []byte `json:"sealed_key,omitempty"`
}

type caRecord struct {
	CA
	SealedKey []byte `json:"sealed_key,omitempty"`
}

// certAAD and caAAD bind a sealed key to its record, so a key copied into
// another record does not open.
func certAAD(identity, serial string) []byte {
	return []byte("cert\x00" + identity + "\x00" + serial)
}

func caAAD(serial string) []byte { return []byte("ca\x00" + serial) }

// u64Key encodes sequence numbers and versions big-endian so that bbolt's
// byte order is numeric order.
func u64Key(v uint64) []byte {
	k := make([]byte, 8)
	binary.BigEndian.PutUint64(k, v)
	return k
}

// certIndexKey is identity + 0x00 + NotBefore (unix nanos, 8 bytes big-endian)
// + serial. The sign bit of the nanos is flipped so that times before 1970
// still sort first.
func certIndexKey(identity string, notBefore time.Time, serial string) []byte {
	k := make([]byte, 0, len(identity)+1+8+len(serial))
	k = append(k, identity...)
	k = append(k, 0)
	k = binary.BigEndian.AppendUint64(k, uint64(notBefore.UnixNano())^(1<<63))
	return append(k, serial...)
}

func certIndexPrefix(identity string) []byte { return append([]byte(identity), 0) }

// checkWrite refuses writes in View. Successful writes set tx.wrote (in put
// and DeleteNode) for the ErrNoAudit rule.
func (tx *Tx) checkWrite() error {
	if !tx.writable {
		return ErrReadOnly
	}
	return nil
}

func (tx *Tx) put(bucket, key []byte, v any) error {
	val, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("store: encode %s: %w", bucket, err)
	}
	return tx.putRaw(bucket, key, val)
}

// putRaw stores val as it is (index entries hold bare serials).
func (tx *Tx) putRaw(bucket, key, val []byte) error {
	if err := tx.kv.put(bucket, key, val); err != nil {
		return fmt.Errorf("store: put %s: %w", bucket, err)
	}
	tx.wrote = true
	return nil
}

// get decodes the value at key into v; json.Unmarshal copies, so nothing in
// v points into the backend's memory.
func (tx *Tx) get(bucket, key []byte, v any) error {
	val, err := tx.kv.get(bucket, key)
	if err != nil {
		err = fmt.Errorf("store: get %s: %w", bucket, err)
		tx.fail(err)
		return err
	}
	if val == nil {
		return ErrNotFound
	}
	if err := json.Unmarshal(val, v); err != nil {
		return fmt.Errorf("store: decode %s %q: %w", bucket, key, err)
	}
	return nil
}

// has reports whether bucket holds key. A read error counts as absent and
// fails the transaction (see fail).
func (tx *Tx) has(bucket, key []byte) bool {
	val, err := tx.kv.get(bucket, key)
	if err != nil {
		tx.fail(fmt.Errorf("store: get %s: %w", bucket, err))
		return false
	}
	return val != nil
}

// fail keeps the first error of a read that has no error result; Update and
// View return it instead of whatever the function made of the read.
func (tx *Tx) fail(err error) {
	if tx.err == nil {
		tx.err = err
	}
}

// scan is kv.scan with the read error kept (see fail); a decode error of fn
// ends the scan and is returned.
func (tx *Tx) scan(bucket, prefix, from []byte, fn func(k, v []byte) error) error {
	var ferr error
	err := tx.kv.scan(bucket, prefix, from, func(k, v []byte) bool {
		ferr = fn(k, v)
		return ferr == nil
	})
	if err != nil {
		err = fmt.Errorf("store: scan %s: %w", bucket, err)
		tx.fail(err)
		return err
	}
	return ferr
}

// errStop ends a scan early without an error.
var errStop = errors.New("store: stop scan")

// last is kv.last with the read error kept (see fail).
func (tx *Tx) last(bucket []byte) (k, v []byte) {
	k, v, err := tx.kv.last(bucket)
	if err != nil {
		tx.fail(fmt.Errorf("store: last of %s: %w", bucket, err))
		return nil, nil
	}
	return k, v
}

// each decodes every value of bucket in key order and calls fn with it.
func each[T any](tx *Tx, bucket []byte, fn func(T)) error {
	return tx.scan(bucket, nil, nil, func(k, val []byte) error {
		var v T
		if err := json.Unmarshal(val, &v); err != nil {
			return fmt.Errorf("store: decode %s %q: %w", bucket, k, err)
		}
		fn(v)
		return nil
	})
}

func all[T any](tx *Tx, bucket []byte) ([]T, error) {
	var out []T
	err := each(tx, bucket, func(v T) { out = append(out, v) })
	return out, err
}

// --- audit ---

// Append adds ev to the audit log with Seq = LastSeq()+1. Time defaults to
// the store clock's now (UTC) and Outcome to OutcomeOK; Action is required.
// It returns the event as stored.
func (tx *Tx) Append(ev Event) (Event, error) {
	if err := tx.checkWrite(); err != nil {
		return Event{}, err
	}
	if ev.Action == "" {
		return Event{}, fmt.Errorf("%w: audit event without an action", ErrInvalid)
	}
	ev.Seq = tx.LastSeq() + 1
	if ev.Time.IsZero() {
		ev.Time = tx.s.clock.Now().UTC()
	}
	if ev.Outcome == "" {
		ev.Outcome = OutcomeOK
	}
	if err := tx.put(bucketAudit, u64Key(ev.Seq), ev); err != nil {
		return Event{}, err
	}
	tx.appended = true
	tx.events = append(tx.events, ev)
	return ev, nil
}

// Events returns up to limit events with Seq > afterSeq, oldest first.
// limit <= 0 means all.
func (tx *Tx) Events(afterSeq uint64, limit int) ([]Event, error) {
	if afterSeq == math.MaxUint64 {
		return nil, nil
	}
	var out []Event
	err := tx.scan(bucketAudit, nil, u64Key(afterSeq+1), func(k, v []byte) error {
		if limit > 0 && len(out) >= limit {
			return errStop
		}
		var ev Event
		if err := json.Unmarshal(v, &ev); err != nil {
			return fmt.Errorf("store: decode audit %d: %w", binary.BigEndian.Uint64(k), err)
		}
		out = append(out, ev)
		return nil
	})
	if err != nil && err != errStop {
		return nil, err
	}
	return out, nil
}

// LastSeq returns the Seq of the newest audit event, 0 when there is none.
func (tx *Tx) LastSeq() uint64 {
	k, _ := tx.last(bucketAudit)
	if len(k) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(k)
}

// --- identities ---

// Identity returns the identity called name, or ErrNotFound.
func (tx *Tx) Identity(name string) (Identity, error) {
	var id Identity
	err := tx.get(bucketIdentities, []byte(name), &id)
	return id, err
}

// Identities returns all identities sorted by name.
func (tx *Tx) Identities() ([]Identity, error) {
	return all[Identity](tx, bucketIdentities)
}

// InsertIdentity creates id; ErrExists if the name is taken.
func (tx *Tx) InsertIdentity(id Identity) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("identity name", id.Name); err != nil {
		return err
	}
	if tx.has(bucketIdentities, []byte(id.Name)) {
		return fmt.Errorf("%w: identity %q", ErrExists, id.Name)
	}
	if err := tx.put(bucketIdentities, []byte(id.Name), id); err != nil {
		return err
	}
	tx.tracked(KindIdentity, id.Name, id.Name)
	return nil
}

// PutIdentity creates or replaces id.
func (tx *Tx) PutIdentity(id Identity) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("identity name", id.Name); err != nil {
		return err
	}
	if err := tx.put(bucketIdentities, []byte(id.Name), id); err != nil {
		return err
	}
	tx.tracked(KindIdentity, id.Name, id.Name)
	return nil
}

// validName rejects empty keys, and NUL bytes, which would break the
// identity-prefixed index keys.
func validName(what, v string) error {
	if v == "" {
		return fmt.Errorf("%w: empty %s", ErrInvalid, what)
	}
	if strings.IndexByte(v, 0) >= 0 {
		return fmt.Errorf("%w: %s %q contains a NUL byte", ErrInvalid, what, v)
	}
	return nil
}

// --- certificates ---

// PutCert stores c by serial and indexes it under its identity. key, the
// leaf's PKCS#8 private key when meshca generated it (nil when it did not,
// as for a certificate issued from a CSR), is sealed with the identity and
// serial as associated data. ErrExists if the serial is already stored:
// certificates are immutable.
func (tx *Tx) PutCert(c Cert, key []byte) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("certificate serial", c.Serial); err != nil {
		return err
	}
	if err := validName("certificate identity", c.Identity); err != nil {
		return err
	}
	if tx.has(bucketCerts, []byte(c.Serial)) {
		return fmt.Errorf("%w: certificate %s", ErrExists, c.Serial)
	}
	rec := certRecord{Cert: c}
	if key != nil {
		sealed, err := tx.s.sealer.Seal(key, certAAD(c.Identity, c.Serial))
		if err != nil {
			return fmt.Errorf("store: seal key of certificate %s: %w", c.Serial, err)
		}
		rec.SealedKey = sealed
	}
	if err := tx.put(bucketCerts, []byte(c.Serial), rec); err != nil {
		return err
	}
	idx := certIndexKey(c.Identity, c.NotBefore, c.Serial)
	if err := tx.putRaw(bucketCertsByID, idx, []byte(c.Serial)); err != nil {
		return fmt.Errorf("store: index certificate %s: %w", c.Serial, err)
	}
	kind := KindCert
	if c.Node != "" {
		kind = KindAgentCert
	}
	tx.tracked(kind, c.Serial, c.Identity)
	return nil
}

// Cert returns the certificate with serial, without its key (which stays
// sealed; KeyHeld says whether there is one), or ErrNotFound.
func (tx *Tx) Cert(serial string) (Cert, error) {
	var rec certRecord
	if err := tx.get(bucketCerts, []byte(serial), &rec); err != nil {
		return Cert{}, err
	}
	c := rec.Cert
	c.KeyHeld = rec.SealedKey != nil
	return c, nil
}

// Credential returns the certificate with serial and its opened key (Key
// nil when meshca does not hold it). ErrNotFound if there is none; an
// error wrapping ErrSealed if the key does not open. It is the only read
// that unseals a leaf's key.
func (tx *Tx) Credential(serial string) (Credential, error) {
	var rec certRecord
	if err := tx.get(bucketCerts, []byte(serial), &rec); err != nil {
		return Credential{}, err
	}
	return tx.openCert(rec)
}

func (tx *Tx) openCert(rec certRecord) (Credential, error) {
	c := Credential{Cert: rec.Cert}
	c.KeyHeld = rec.SealedKey != nil
	if rec.SealedKey != nil {
		key, err := tx.s.sealer.Open(rec.SealedKey, certAAD(c.Identity, c.Serial))
		if err != nil {
			return Credential{}, fmt.Errorf("%w: certificate %s of %q: %w", ErrSealed, c.Serial, c.Identity, err)
		}
		c.Key = key
	}
	return c, nil
}

// CertsFor returns the certificates of identity ordered by NotBefore, then
// serial, without their keys.
func (tx *Tx) CertsFor(identity string) ([]Cert, error) {
	var serials []string
	err := tx.scan(bucketCertsByID, certIndexPrefix(identity), nil, func(_, serial []byte) error {
		serials = append(serials, string(serial))
		return nil
	})
	if err != nil {
		return nil, err
	}
	var out []Cert
	for _, serial := range serials {
		cert, err := tx.Cert(serial)
		if err != nil {
			return nil, fmt.Errorf("store: certificates of %q: %w", identity, err)
		}
		out = append(out, cert)
	}
	return out, nil
}

// --- CAs ---

// PutCA creates or replaces the CA certificate c by serial. c.Key, when
// non-nil, is sealed with "ca" and the serial as associated data.
func (tx *Tx) PutCA(c CA) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("CA serial", c.Serial); err != nil {
		return err
	}
	rec := caRecord{CA: c}
	if c.Key != nil {
		sealed, err := tx.s.sealer.Seal(c.Key, caAAD(c.Serial))
		if err != nil {
			return fmt.Errorf("store: seal key of CA %s: %w", c.Serial, err)
		}
		rec.SealedKey = sealed
	}
	if err := tx.put(bucketCAs, []byte(c.Serial), rec); err != nil {
		return err
	}
	tx.tracked(KindCA, c.Serial, "")
	return nil
}

// CA returns the CA certificate with serial and its opened key. ErrNotFound
// if there is none; an error wrapping ErrSealed if the key does not open.
func (tx *Tx) CA(serial string) (CA, error) {
	var rec caRecord
	if err := tx.get(bucketCAs, []byte(serial), &rec); err != nil {
		return CA{}, err
	}
	return tx.openCA(rec)
}

func (tx *Tx) openCA(rec caRecord) (CA, error) {
	c := rec.CA
	if rec.SealedKey != nil {
		key, err := tx.s.sealer.Open(rec.SealedKey, caAAD(c.Serial))
		if err != nil {
			return CA{}, fmt.Errorf("%w: CA %s: %w", ErrSealed, c.Serial, err)
		}
		c.Key = key
	}
	return c, nil
}

// SetCASet makes set the active CA. Every serial in it must be a stored CA
// (ErrNotFound otherwise).
func (tx *Tx) SetCASet(set CASet) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if set.IssuerSerial == "" {
		return fmt.Errorf("%w: CA set without an issuer", ErrInvalid)
	}
	if err := tx.missingCAs(set); err != nil {
		return err
	}
	if err := tx.put(bucketMeta, metaCASet, set); err != nil {
		return err
	}
	tx.tracked(KindCA, "", "")
	return nil
}

// missingCAs names the serials of set that are not stored CAs.
func (tx *Tx) missingCAs(set CASet) error {
	var missing []string
	for _, serial := range append(append([]string{set.IssuerSerial}, set.ChainSerials...), set.RootSerials...) {
		if !tx.has(bucketCAs, []byte(serial)) {
			missing = append(missing, serial)
		}
	}
	if len(missing) > 0 {
		return fmt.Errorf("%w: CA set names unknown CA serials %s", ErrNotFound, strings.Join(missing, ", "))
	}
	return nil
}

// CASet returns the active CA set; ErrNotFound before the first SetCASet.
func (tx *Tx) CASet() (CASet, error) {
	var set CASet
	err := tx.get(bucketMeta, metaCASet, &set)
	return set, err
}

// --- nodes ---

// PutNode creates or replaces n.
func (tx *Tx) PutNode(n Node) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("node name", n.Name); err != nil {
		return err
	}
	if err := tx.put(bucketNodes, []byte(n.Name), n); err != nil {
		return err
	}
	tx.nodes = true
	tx.tracked(KindNode, n.Name, "")
	return nil
}

// Node returns the node called name, or ErrNotFound.
func (tx *Tx) Node(name string) (Node, error) {
	val, err := tx.kv.get(bucketNodes, []byte(name))
	if err != nil {
		err = fmt.Errorf("store: get %s: %w", bucketNodes, err)
		tx.fail(err)
		return Node{}, err
	}
	if val == nil {
		return Node{}, ErrNotFound
	}
	if n, ok := tx.s.nodeCache.get(name, val); ok {
		return n, nil
	}
	var n Node
	if err := json.Unmarshal(val, &n); err != nil {
		return Node{}, fmt.Errorf("store: decode %s %q: %w", bucketNodes, name, err)
	}
	tx.s.nodeCache.put(name, val, n)
	return n, nil
}

// Nodes returns all nodes sorted by name.
func (tx *Tx) Nodes() ([]Node, error) { return all[Node](tx, bucketNodes) }

// DeleteNode removes the node called name and its join token; ErrNotFound
// if there is none.
func (tx *Tx) DeleteNode(name string) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if !tx.has(bucketNodes, []byte(name)) {
		return fmt.Errorf("%w: node %q", ErrNotFound, name)
	}
	if err := tx.kv.del(bucketNodes, []byte(name)); err != nil {
		return fmt.Errorf("store: delete node %q: %w", name, err)
	}
	if err := tx.kv.del(bucketJoinTokens, []byte(name)); err != nil {
		return fmt.Errorf("store: delete join token of node %q: %w", name, err)
	}
	tx.wrote, tx.nodes = true, true
	tx.tracked(KindNode, name, "")
	return nil
}

// --- revocations ---

// PutRevocation creates or replaces r by serial.
func (tx *Tx) PutRevocation(r Revocation) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("revoked serial", r.Serial); err != nil {
		return err
	}
	if err := tx.put(bucketRevocations, []byte(r.Serial), r); err != nil {
		return err
	}
	tx.tracked(KindRevocation, r.Serial, r.Identity)
	return nil
}

// Revocation returns the revocation of serial, or ErrNotFound.
func (tx *Tx) Revocation(serial string) (Revocation, error) {
	var r Revocation
	err := tx.get(bucketRevocations, []byte(serial), &r)
	return r, err
}

// Revocations returns all revocations ordered by RevokedAt, then serial.
func (tx *Tx) Revocations() ([]Revocation, error) {
	out, err := all[Revocation](tx, bucketRevocations)
	if err != nil {
		return nil, err
	}
	// Keys are serials, so the input is serial-ordered; a stable sort by
	// time keeps that as the tie-break.
	sort.SliceStable(out, func(i, j int) bool { return out[i].RevokedAt.Before(out[j].RevokedAt) })
	return out, nil
}

// --- mesh document ---

// AppendMesh stores doc as the next version (1 for the first) applied by by,
// at the store clock's now (UTC).
func (tx *Tx) AppendMesh(doc []byte, by string) (Mesh, error) {
	if err := tx.checkWrite(); err != nil {
		return Mesh{}, err
	}
	var next uint64 = 1
	if k, _ := tx.last(bucketMesh); len(k) == 8 {
		next = binary.BigEndian.Uint64(k) + 1
	}
	m := Mesh{
		Version:   next,
		Document:  bytes.Clone(doc),
		AppliedBy: by,
		AppliedAt: tx.s.clock.Now().UTC(),
	}
	if err := tx.put(bucketMesh, u64Key(m.Version), m); err != nil {
		return Mesh{}, err
	}
	tx.tracked(KindMesh, strconv.FormatUint(m.Version, 10), "")
	return m, nil
}

// Mesh returns the given version of the mesh document, or ErrNotFound.
func (tx *Tx) Mesh(version uint64) (Mesh, error) {
	var m Mesh
	err := tx.get(bucketMesh, u64Key(version), &m)
	return m, err
}

// LatestMesh returns the newest version; ErrNotFound when none was applied.
func (tx *Tx) LatestMesh() (Mesh, error) {
	k, v := tx.last(bucketMesh)
	if k == nil {
		return Mesh{}, ErrNotFound
	}
	var m Mesh
	if err := json.Unmarshal(v, &m); err != nil {
		return Mesh{}, fmt.Errorf("store: decode mesh %q: %w", k, err)
	}
	return m, nil
}

// MeshHistory returns every version, oldest first.
func (tx *Tx) MeshHistory() ([]Mesh, error) { return all[Mesh](tx, bucketMesh) }
