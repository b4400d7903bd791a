package app

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"slices"

	"google.golang.org/grpc/metadata"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/nodeapi"
)

// newReplicaID names this process among the replicas: random, so that two
// processes never share one, and short enough to read on the status page.
func newReplicaID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b) // crypto/rand.Read never fails
	return hex.EncodeToString(b)
}

// replicaList adapts the store's registrations to the admin API.
type replicaList struct {
	st   *store.Store
	self string
	// rotation is Authority.RotationCASetVersion: during a CA rotation
	// each replica's report of its nodes is listed with it.
	rotation func() (version string, rotating bool)
}

func (l replicaList) Replicas(ctx context.Context) ([]api.Replica, error) {
	rs, err := l.st.Replicas(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]api.Replica, 0, len(rs))
	for _, r := range rs {
		out = append(out, api.Replica{ID: r.ID, XDS: r.XDS, Since: r.Since, Self: r.ID == l.self})
	}
	if l.rotation == nil {
		return out, nil
	}
	version, rotating := l.rotation()
	if !rotating {
		return out, nil
	}
	reports, err := l.st.NodeAcks(ctx)
	if err != nil {
		return nil, err
	}
	for i := range out {
		n := &api.ReplicaNodes{}
		// A replica registered after the read above has no entry: listed
		// as not reported, as the leader would count it.
		for _, rep := range reports {
			if rep.Replica == out[i].ID && rep.Version == version {
				n = &api.ReplicaNodes{Reported: true, Connected: rep.Connected, Pending: rep.Pending, At: rep.At}
			}
		}
		if len(reports) > 0 {
			out[i].Nodes = n
		}
	}
	return out, nil
}

// withReplicas adds the replicas' xDS addresses to a join or renewal
// answer when the node asked for them (nodeapi.ReplicasHeader). It never
// fails the answer: the token is spent by then, and a node without the
// list still has the server it joined.
func withReplicas(ctx context.Context, st *store.Store, log *slog.Logger, resp nodeapi.JoinResponse) nodeapi.JoinResponse {
	if st == nil {
		return resp
	}
	md, _ := metadata.FromIncomingContext(ctx)
	if !slices.Contains(md.Get(nodeapi.ReplicasHeader), "1") {
		return resp
	}
	rs, err := st.Replicas(ctx)
	if err != nil {
		log.Warn("replica list left out of a join answer", "node", resp.Node, "err", err)
		return resp
	}
	for _, r := range rs {
		if !slices.Contains(resp.Replicas, r.XDS) {
			resp.Replicas = append(resp.Replicas, r.XDS)
		}
	}
	return resp
}
