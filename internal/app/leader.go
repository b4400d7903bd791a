package app

import (
	"context"
	"net"
	"os"

	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/leader"
	"github.com/meshca/meshca/internal/store"
)

// replica is how this process stands for leader: named by its host and
// xDS port (unique among replicas of one host), reached at the xDS
// address nodes are told to dial.
func replica(advertisedXDS string) store.Candidate {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "meshca"
	}
	id := host
	if _, port, err := net.SplitHostPort(advertisedXDS); err == nil {
		id = net.JoinHostPort(host, port)
	}
	return store.Candidate{ID: id, Address: advertisedXDS}
}

// leadership adapts the elector to the admin API.
type leadership struct{ el *leader.Elector }

var _ admin.Leadership = leadership{}

func (l leadership) Leader(ctx context.Context) (api.Leader, bool, error) {
	c, ok, err := l.el.Leader(ctx)
	if err != nil || !ok {
		return api.Leader{}, false, err
	}
	return api.Leader{ID: c.ID, Address: c.Address, Self: c == l.el.Self()}, true, nil
}
