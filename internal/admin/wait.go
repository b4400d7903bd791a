package admin

import (
	"context"
	"fmt"
	"net/http"
	"time"

	"github.com/meshca/meshca/internal/api"
)

// PushWaiter waits until the connected nodes affected by the changes
// committed so far have been sent them and acknowledged them, or ctx ends.
// It reports how many such nodes there are, how many have the changes and
// how long it waited.
type PushWaiter interface {
	WaitPushed(ctx context.Context) (nodes, have int, took time.Duration)
}

// pushWait reads ?wait=pushed&timeout=D. It is read before the write, so
// that a malformed request changes nothing.
func pushWait(r *http.Request) (wait bool, timeout time.Duration, err error) {
	q := r.URL.Query()
	switch q.Get(api.QueryWait) {
	case "":
		return false, 0, nil
	case api.WaitPushed:
	default:
		return false, 0, fmt.Errorf("%w: %s=%q: the only value is %q", errInvalid, api.QueryWait, clip(q.Get(api.QueryWait)), api.WaitPushed)
	}
	timeout = api.DefaultWait
	if t := q.Get(api.QueryTimeout); t != "" {
		if timeout, err = time.ParseDuration(t); err != nil || timeout <= 0 || timeout > api.MaxWait {
			return false, 0, fmt.Errorf("%w: %s=%q: give a duration between 1ms and %s, e.g. 5s", errInvalid, api.QueryTimeout, clip(t), api.MaxWait)
		}
	}
	return true, timeout, nil
}

// waitPushed waits, after a committed write, until its change reached the
// nodes or timeout passed. The write is done: the caller going away ends
// the wait, not the change.
func (s *Server) waitPushed(r *http.Request, timeout time.Duration) *api.Pushed {
	if s.cfg.Pushes == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	nodes, have, took := s.cfg.Pushes.WaitPushed(ctx)
	return &api.Pushed{Nodes: nodes, Have: have, Missing: nodes - have, TookMS: float64(took.Microseconds()) / 1000, Complete: have == nodes && ctx.Err() == nil}
}
