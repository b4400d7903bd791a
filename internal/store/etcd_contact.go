package store

import (
	"context"
	"sync"
	"time"

	"github.com/meshca/meshca/internal/clock"
)

// contactPoll is how often the etcd store asks EtcdConfig.Contact whether
// the replica still has etcd, to end the calls already waiting for it.
const contactPoll = 100 * time.Millisecond

// contactLoss ends the etcd calls in flight when the owner of the store
// reports that this replica has lost etcd (EtcdConfig.Contact). The check
// at the start of Update and View stops new calls; without this, a call
// that started just before the loss (a read of a member that has lost its
// quorum) would wait as long as its caller's context allows, which for an
// admin request is as long as the client waits.
//
// A nil *contactLoss (a store opened for a migration) never ends a call.
type contactLoss struct {
	contact func() error // nil: never lost

	mu   sync.Mutex
	lost context.Context // ended while contact is lost; replaced when it returns
	end  context.CancelFunc
}

func newContactLoss(contact func() error) *contactLoss {
	c := &contactLoss{contact: contact}
	c.lost, c.end = context.WithCancel(context.Background())
	return c
}

// follow polls Contact until ctx ends. Its ticker is the wall clock, not
// the store's: it follows network round trips, which a test's fake clock
// does not govern.
func (c *contactLoss) follow(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	if c.contact == nil {
		return
	}
	clk := clock.Real{}
	for {
		c.observe(c.contact())
		select {
		case <-ctx.Done():
			return
		case <-clk.After(contactPoll):
		}
	}
}

// observe ends the calls in flight when err reports a loss, and lets new
// calls run again once it is gone.
func (c *contactLoss) observe(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch ended := c.lost.Err() != nil; {
	case err != nil && !ended:
		c.end()
	case err == nil && ended:
		c.lost, c.end = context.WithCancel(context.Background())
	}
}

// bound returns ctx ending also when contact is lost (now or later), and
// the function that releases it.
func (c *contactLoss) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if c == nil || c.contact == nil {
		return ctx, func() {}
	}
	c.mu.Lock()
	if c.lost.Err() != nil && c.contact() == nil {
		// Back since the last poll.
		c.lost, c.end = context.WithCancel(context.Background())
	}
	lost := c.lost
	c.mu.Unlock()
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(lost, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// failed reports Contact's verdict when an etcd call failed with err:
// non-nil when contact is lost, and then the reason the caller is given,
// in the words of the store's owner.
func (c *contactLoss) failed(err error) error {
	if err == nil || c == nil || c.contact == nil {
		return nil
	}
	return c.contact()
}
