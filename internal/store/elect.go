package store

import (
	"context"
	"sync"
	"time"
)

// Candidate is a replica standing for leader, as others see it in status.
type Candidate struct {
	ID      string `json:"id"`      // the replica's name
	Address string `json:"address"` // where nodes reach it (its xDS address)
}

// Fence stands for one term of office. An Update whose context carries a
// Fence (WithFence) commits only while that term lasts: on etcd its
// transaction also compares the create revision of the term's election
// key, and fails with ErrNotLeader when the key is gone or belongs to
// another term, so that a deposed leader's late write never lands. bbolt
// ignores fences: one process holds the file, so it always leads.
type Fence struct {
	key string // the election key on etcd; "" on bbolt
	rev int64  // its create revision
}

type fenceKey struct{}

// WithFence returns ctx carrying f: every Update made with it (or with a
// context derived from it) is fenced. It is the leader's work context, so
// that each of the loops it runs is fenced without knowing it.
func WithFence(ctx context.Context, f Fence) context.Context {
	return context.WithValue(ctx, fenceKey{}, f)
}

// fenceOf returns the etcd fence ctx carries, if any.
func fenceOf(ctx context.Context) (Fence, bool) {
	f, ok := ctx.Value(fenceKey{}).(Fence)
	return f, ok && f.key != ""
}

// Term is one replica's time as leader, from a Campaign.
type Term struct {
	// Fence fences the writes made as leader during this term.
	Fence  Fence
	done   <-chan struct{}
	resign func(context.Context) error
}

// Done is closed when the term ends without Resign: on etcd, the
// session's lease expired or was revoked, the election key was deleted,
// or the store was closed. Whatever runs as leader must stop then.
func (t *Term) Done() <-chan struct{} { return t.done }

// Resign ends the term at once and lets another replica lead; calling it
// again does nothing.
func (t *Term) Resign(ctx context.Context) error { return t.resign(ctx) }

// Campaign blocks until this replica leads, or ctx ends. On etcd it is an
// election (concurrency.NewElection under P/leader) held by a session
// lease of ttl (whole seconds, at least one; etcd may raise it): a replica
// that stops renewing the lease (crash, partition, a pause longer than
// ttl) loses the term after ttl, and another one is elected. A replica that
// hears no renewal for two thirds of ttl ends its own term (Done) first. On bbolt one Campaign at a
// time wins at once: the file lock already makes the process the only
// writer.
func (s *Store) Campaign(ctx context.Context, c Candidate, ttl time.Duration) (*Term, error) {
	if s.etcd != nil {
		return s.etcd.campaign(ctx, c, ttl)
	}
	return s.terms.campaign(ctx, c)
}

// Leader returns the candidate that leads now; ok is false when none does.
func (s *Store) Leader(ctx context.Context) (c Candidate, ok bool, err error) {
	if s.etcd != nil {
		return s.etcd.leader(ctx)
	}
	return s.terms.leader()
}

// localTerms is the election of a bbolt store: one term at a time in this
// process.
type localTerms struct {
	mu    sync.Mutex
	held  bool
	who   Candidate
	freed chan struct{} // closed when the term held is resigned
}

func (l *localTerms) campaign(ctx context.Context, c Candidate) (*Term, error) {
	for {
		l.mu.Lock()
		if !l.held {
			l.held, l.who, l.freed = true, c, make(chan struct{})
			freed := l.freed
			l.mu.Unlock()
			var once sync.Once
			return &Term{
				done: make(chan struct{}), // a bbolt term ends only by Resign
				resign: func(context.Context) error {
					once.Do(func() {
						l.mu.Lock()
						l.held = false
						close(freed)
						l.mu.Unlock()
					})
					return nil
				},
			}, nil
		}
		freed := l.freed
		l.mu.Unlock()
		select {
		case <-freed:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (l *localTerms) leader() (Candidate, bool, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.held {
		return Candidate{}, false, nil
	}
	return l.who, true, nil
}
