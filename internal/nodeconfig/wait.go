package nodeconfig

import (
	"context"
	"time"
)

// Acks tells which nodes have what they were handed; the xDS server
// implements it.
type Acks interface {
	// Synced reports whether node is connected, and whether it has
	// acknowledged everything last handed over for it.
	Synced(node string) (connected, synced bool)
	// AckEvents returns a channel closed at the next acknowledgement or
	// disconnection of any node.
	AckEvents() <-chan struct{}
}

// progress is how far the Builder got, by feed position (Batch.Pos).
// Guarded by Builder.mu.
type progress struct {
	dispatched uint64            // every batch up to here is queued
	want       map[string]uint64 // node -> Pos of the newest batch that queued it
	built      map[string]uint64 // node -> want when its last successful build started
	trustWant  uint64
	trustBuilt uint64
	changed    chan struct{} // closed and replaced at every step
}

func (p *progress) init() {
	p.want, p.built, p.changed = map[string]uint64{}, map[string]uint64{}, make(chan struct{})
}

func (p *progress) signalLocked() {
	close(p.changed)
	p.changed = make(chan struct{})
}

// Pushed is how far a change reached the connected nodes it affects.
type Pushed struct {
	// Nodes are the affected nodes that are connected; Have of them
	// acknowledged the change.
	Nodes, Have int
	Took        time.Duration
	// Complete: every affected connected node has the change (false when
	// ctx ended first).
	Complete bool
}

// WaitPushed waits until every node affected by the changes committed so
// far, and connected, has been handed its new configuration and has
// acknowledged it, or until ctx ends; it reports how far it got either
// way. A node that disconnects meanwhile no longer counts. Call it after
// the write returned.
func (b *Builder) WaitPushed(ctx context.Context) Pushed {
	start := b.cfg.Clock.Now()
	seq := b.cfg.Store.FeedPos()
	for {
		var acks <-chan struct{}
		if b.cfg.Acks != nil {
			acks = b.cfg.Acks.AckEvents()
		}
		p, changed := b.pushed(seq)
		p.Took = b.cfg.Clock.Now().Sub(start)
		if p.Complete {
			return p
		}
		select {
		case <-ctx.Done():
			p.Took = b.cfg.Clock.Now().Sub(start)
			return p
		case <-changed:
		case <-acks:
		}
	}
}

// pushed counts, for the changes up to seq, the affected connected nodes
// and those that have them, and returns the channel to wait on for the
// next step.
func (b *Builder) pushed(seq uint64) (Pushed, <-chan struct{}) {
	b.mu.Lock()
	changed := b.progress.changed
	if b.progress.dispatched < seq {
		b.mu.Unlock()
		return Pushed{}, changed
	}
	affected := map[string]bool{} // node -> built
	trust := b.progress.trustWant >= seq
	trustDone := b.progress.trustBuilt >= seq
	for n, w := range b.progress.want {
		if w >= seq {
			affected[n] = b.progress.built[n] >= seq
		}
	}
	if trust {
		for n := range b.known {
			if _, ok := affected[n]; !ok {
				affected[n] = true
			}
		}
	}
	b.mu.Unlock()
	var p Pushed
	for n, built := range affected {
		connected, synced := true, true
		if b.cfg.Acks != nil {
			connected, synced = b.cfg.Acks.Synced(n)
		}
		if !connected {
			continue
		}
		p.Nodes++
		if built && (!trust || trustDone) && synced {
			p.Have++
		}
	}
	p.Complete = p.Have == p.Nodes && (!trust || trustDone)
	return p, changed
}

// WaitNode waits until node's configuration covers every change the feed
// has handed over so far (built and published, or removed), or until ctx
// ends. A node that connects right after it joined can arrive before the
// build its join queued; the xDS server waits here before refusing a node
// it does not know. A build that fails is waited for until ctx ends.
func (b *Builder) WaitNode(ctx context.Context, node string) {
	pos := b.cfg.Store.FeedPos()
	for {
		b.mu.Lock()
		changed := b.progress.changed
		done := b.progress.dispatched >= pos && b.progress.built[node] >= b.progress.want[node]
		b.mu.Unlock()
		if done {
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// Idle reports whether everything the feed has handed over so far has been
// published: no node or trust change is queued, being built, or failed
// since. A CA rotation uses it so that nodes count as having acknowledged
// a new bundle only once they were sent it.
func (b *Builder) Idle() bool {
	pos := b.cfg.Store.FeedPos()
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.progress.dispatched < pos || b.progress.trustBuilt < b.progress.trustWant {
		return false
	}
	for n, w := range b.progress.want {
		if b.progress.built[n] < w {
			return false
		}
	}
	return true
}
