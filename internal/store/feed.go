package store

import (
	"context"
	"slices"
	"sync"
)

// Kind says what sort of record a Change is about.
type Kind string

// Kinds of change. Key names the record; Identity is set where a record
// belongs to an identity.
const (
	KindIdentity   Kind = "identity"   // Key: identity name
	KindCert       Kind = "cert"       // Key: serial; Identity: its owner ("node/NAME" for node certificates)
	KindNode       Kind = "node"       // Key: node name (written or deleted)
	KindRevocation Kind = "revocation" // Key: revoked serial; Identity: its owner
	KindCA         Kind = "ca"         // Key: CA serial, or "" for the active CA set
	KindMesh       Kind = "mesh"       // Key: the new version, in decimal
	KindCRL        Kind = "crl"        // Key: "": the signed CRL in use
)

// Change names one changed record.
type Change struct {
	Kind     Kind
	Key      string
	Identity string
}

// Batch is what a subscriber receives: every change committed since its
// previous Batch, each named once.
type Batch struct {
	// Seq is the store's sequence after these changes: the audit Seq of
	// the last event of the newest commit in the batch. It only grows.
	Seq uint64
	// Changes are in the order in which each was first committed; a record
	// changed several times appears once.
	Changes []Change
	// Pos is the feed's position after this batch: it counts the commits
	// that changed records handed to subscribers, in order. Compare it with Store.FeedPos to know that a subscriber has
	// seen everything queued before some point (a write that returned).
	Pos uint64
	// Resync means changes were dropped because the subscriber's queue was
	// full: treat every record as changed. Changes is then empty.
	Resync bool
}

// DefaultFeedLimit is how many distinct changes a subscription holds
// before it degrades to a resync.
const DefaultFeedLimit = 4096

// Subscription is one consumer's queue of changes. Its methods are safe for
// concurrent use; one goroutine is expected to call Next in a loop.
type Subscription struct {
	f     *feed
	limit int
	ready chan struct{} // capacity 1: something is queued

	mu      sync.Mutex
	seq     uint64
	pos     uint64
	pending []Change
	index   map[Change]struct{}
	resync  bool
	closed  bool
}

// Next blocks until something changed since the previous call (or since
// Subscribe), then returns all of it, coalesced. It returns ctx's error when
// ctx ends first, and ErrClosed after Close.
func (s *Subscription) Next(ctx context.Context) (Batch, error) {
	for {
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return Batch{}, ErrClosed
		}
		if len(s.pending) > 0 || s.resync {
			b := Batch{Seq: s.seq, Pos: s.pos, Changes: s.pending, Resync: s.resync}
			s.pending, s.index, s.resync = nil, nil, false
			s.mu.Unlock()
			return b, nil
		}
		s.mu.Unlock()
		select {
		case <-s.ready:
		case <-ctx.Done():
			return Batch{}, ctx.Err()
		}
	}
}

// Take returns, without waiting, the distinct keys of kind among the
// changes queued since the previous call, and whether changes were dropped
// (then every record must be treated as changed). Changes are queued
// before an Update returns on bbolt, and moments later on etcd, where they
// come from a watch. It returns ErrClosed after Close.
func (s *Subscription) Take(kind Kind) (keys []string, resync bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false, ErrClosed
	}
	for _, c := range s.pending {
		if c.Kind == kind {
			keys = append(keys, c.Key)
		}
	}
	resync = s.resync
	s.pending, s.index, s.resync = nil, nil, false
	slices.Sort(keys)
	return slices.Compact(keys), resync, nil
}

// TakeAll returns, without waiting, every change queued since the previous
// call (or Take), each once, in the order first committed, and whether
// changes were dropped (then every record must be treated as changed). It
// is Take for a consumer that follows several kinds on one subscription.
// It returns ErrClosed after Close.
func (s *Subscription) TakeAll() (changes []Change, resync bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, false, ErrClosed
	}
	changes, resync = s.pending, s.resync
	s.pending, s.index, s.resync = nil, nil, false
	return changes, resync, nil
}

// Ready is signalled when Next would not block; for consumers that select
// on several sources. It may fire spuriously.
func (s *Subscription) Ready() <-chan struct{} { return s.ready }

// Close ends the subscription: the store stops queueing for it and Next
// returns ErrClosed.
func (s *Subscription) Close() {
	s.f.remove(s)
	s.mu.Lock()
	s.closed = true
	s.pending, s.index = nil, nil
	s.mu.Unlock()
	s.wake()
}

func (s *Subscription) wake() {
	select {
	case s.ready <- struct{}{}:
	default:
	}
}

// add queues changes up to seq and pos without blocking.
func (s *Subscription) add(seq, pos uint64, changes []Change) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.seq = max(s.seq, seq)
	s.pos = max(s.pos, pos)
	if !s.resync {
		if s.index == nil {
			s.index = make(map[Change]struct{})
		}
		for _, c := range changes {
			if _, dup := s.index[c]; dup {
				continue
			}
			if len(s.pending) >= s.limit {
				s.pending, s.index, s.resync = nil, nil, true
				break
			}
			s.index[c] = struct{}{}
			s.pending = append(s.pending, c)
		}
	}
	s.mu.Unlock()
	s.wake()
}

// feed orders committed changes by their audit sequence and hands them to
// every subscription. Commits of a group can finish in any order on their
// callers' goroutines; a commit that arrives early waits in held until
// every commit before it was delivered.
type feed struct {
	mu        sync.Mutex
	delivered uint64              // the last audit Seq handed to subscribers
	pos       uint64              // commits with changes handed over
	held      map[uint64]heldPart // by first Seq: commits that arrived early
	subs      []*Subscription
}

type heldPart struct {
	last    uint64
	changes []Change
}

// committed hands over the changes of one commit whose audit events run
// from first to last. Every commit with events must be reported, in any
// order, exactly once.
func (f *feed) committed(first, last uint64, changes []Change) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if first != f.delivered+1 {
		if f.held == nil {
			f.held = map[uint64]heldPart{}
		}
		f.held[first] = heldPart{last: last, changes: changes}
		return
	}
	f.deliver(last, changes)
	for {
		p, ok := f.held[f.delivered+1]
		if !ok {
			return
		}
		delete(f.held, f.delivered+1)
		f.deliver(p.last, p.changes)
	}
}

// deliver runs with f.mu held.
func (f *feed) deliver(last uint64, changes []Change) {
	f.delivered = last
	if len(changes) == 0 {
		return
	}
	f.pos++
	for _, s := range f.subs {
		s.add(last, f.pos, changes)
	}
}

func (f *feed) subscribe(limit int) *Subscription {
	if limit <= 0 {
		limit = DefaultFeedLimit
	}
	s := &Subscription{f: f, limit: limit, ready: make(chan struct{}, 1)}
	f.mu.Lock()
	s.seq, s.pos = f.delivered, f.pos
	f.subs = append(f.subs, s)
	f.mu.Unlock()
	return s
}

func (f *feed) remove(s *Subscription) {
	f.mu.Lock()
	f.subs = slices.DeleteFunc(f.subs, func(x *Subscription) bool { return x == s })
	f.mu.Unlock()
}

// Subscribe starts a subscription to every change committed from now on.
// limit bounds how many distinct changes it holds before degrading to a
// resync (<= 0: DefaultFeedLimit). Read the current state after Subscribe,
// not before, so that no change falls between the two.
func (s *Store) Subscribe(limit int) *Subscription { return s.feed.subscribe(limit) }

// FeedPos is the feed's position now: what a Batch.Pos reaches once a
// subscriber has seen everything handed over so far. Read after an Update
// returns, it covers it (unless a commit of the same group
// that came before the Update has not been handed over yet, a window of
// microseconds; then it covers it a moment later).
func (s *Store) FeedPos() uint64 {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	return s.feed.pos
}

// tracked records a change made in this run of fn.
func (tx *Tx) tracked(kind Kind, key, identity string) {
	tx.changes = append(tx.changes, Change{Kind: kind, Key: key, Identity: identity})
}

// FeedSeq is the store's sequence the feed has handed over: the audit Seq
// of the newest commit delivered to subscribers (Batch.Seq of a batch
// queued now). On etcd the sequence is shared by every replica, so that a
// replica can say how far it has followed the store in terms another
// replica understands.
func (s *Store) FeedSeq() uint64 {
	s.feed.mu.Lock()
	defer s.feed.mu.Unlock()
	return s.feed.delivered
}
