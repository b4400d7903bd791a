package authority

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/internal/store"
)

// ackReportRefresh is how often a replica publishes its report again when
// nothing changed: the key goes with a lost registration lease, and the
// replica registers again under a new one.
const ackReportRefresh = 5 * time.Second

// Log attribute keys of the replicas' reports.
const (
	logReplica = "replica"
	logVersion = "ca_set_version"
)

// caSetVersion names what nodes are sent of a CA set: its roots, issuer,
// chain and rotation phase. Replicas that loaded the same set give the
// same name.
func caSetVersion(set store.CASet) string {
	h := sha256.New()
	write := func(parts ...string) {
		for _, p := range parts {
			h.Write([]byte(p))
			h.Write([]byte{0})
		}
		h.Write([]byte{1})
	}
	write(set.RootSerials...)
	write(set.IssuerSerial)
	write(set.ChainSerials...)
	if rot := set.Rotation; rot != nil {
		write(rot.Kind, rot.Phase, rot.PhaseSince.UTC().Format(time.RFC3339Nano))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// RunAckReport publishes, while a CA rotation is in progress, how the
// nodes connected to this replica (Config.Replica) stand with the CA set
// it loaded from the change feed: at most once a rotationTick, and only
// when the count or how far the store was followed changed (or every
// ackReportRefresh). The leader, wherever
// it runs, sums these reports (replicaAcks). It is for a shared store:
// on bbolt there is no other replica, and nothing is published. It
// returns nil when ctx ends.
func (a *Authority) RunAckReport(ctx context.Context, acks Acks) error {
	var last store.NodeAcks
	failing := false // a failure was logged, and none has succeeded since
	for {
		if set := a.loaded.Load(); set != nil && set.Rotation != nil && a.cfg.Replica != "" {
			// What the feed had handed over before counting: the nodes'
			// configuration covers it once acks finds it idle.
			seq := a.cfg.Store.FeedSeq()
			pending, connected := acks(ctx)
			now := a.cfg.Clock.Now().UTC()
			r := store.NodeAcks{Replica: a.cfg.Replica, Version: caSetVersion(*set), Seq: seq, Connected: connected, Pending: pending, At: now}
			if r.Version != last.Version || r.Seq != last.Seq || r.Connected != last.Connected || r.Pending != last.Pending ||
				now.Sub(last.At) >= ackReportRefresh {
				err := a.cfg.Store.PutNodeAcks(ctx, r)
				switch {
				case ctx.Err() != nil:
					return nil
				case err == nil:
					last, failing = r, false
				case errors.Is(err, store.ErrNotRegistered) || failing:
					// Registering (again), or said already: the leader
					// counts this replica as not reported meanwhile.
					a.log.Debug("this replica's node acknowledgements not published; will retry", logReplica, a.cfg.Replica, "err", err)
				default:
					failing = true
					a.log.Warn("cannot publish this replica's node acknowledgements for the CA rotation; will retry every second", logReplica, a.cfg.Replica, "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.cfg.Clock.After(rotationTick):
		}
	}
}

// RotationCASetVersion names, while a CA rotation is in progress, the CA
// set this replica loaded as the replicas' reports name it (rotating is
// false otherwise): a report of another version is not counted.
func (a *Authority) RotationCASetVersion() (version string, rotating bool) {
	set := a.loaded.Load()
	if set == nil || set.Rotation == nil {
		return "", false
	}
	return caSetVersion(*set), true
}

// nodeAcks is how the nodes of every replica stand with the CA set set:
// this replica's counted by local, the others' from their reports. A
// replica whose report is of another CA set, or older than seq (the
// store's sequence the reports must cover), is unreported: its nodes may
// not have been sent what the rotation waits for.
type nodeAcks struct {
	pending, connected int
	unreported         []string
}

// replicaAcks sums the nodes connected to every replica. On bbolt it is
// local alone.
func (a *Authority) replicaAcks(ctx context.Context, set store.CASet, seq uint64, local Acks) (nodeAcks, error) {
	var out nodeAcks
	out.pending, out.connected = local(ctx)
	reports, err := a.cfg.Store.NodeAcks(ctx)
	if err != nil {
		return nodeAcks{}, fmt.Errorf("read the other replicas' node acknowledgements: %w", err)
	}
	version := caSetVersion(set)
	for _, r := range reports {
		if r.Replica == a.cfg.Replica {
			continue // counted by local, and fresher
		}
		if r.Version != version || r.Seq < seq {
			out.unreported = append(out.unreported, r.Replica)
			a.log.Debug("replica has not reported its nodes for this CA set yet", logReplica, r.Replica, logVersion, version)
			continue
		}
		out.pending += r.Pending
		out.connected += r.Connected
	}
	return out, nil
}

// waiting reports whether the rotation has nodes to wait for.
func (n nodeAcks) waiting() bool { return n.pending > 0 || len(n.unreported) > 0 }

// describe says what the rotation waits for; what is the thing the nodes
// acknowledge.
func (n nodeAcks) describe(what string, until time.Time) string {
	s := fmt.Sprintf("%d of %d connected node(s) to acknowledge %s (until %s at most)", n.pending, n.connected, what, until.Format(time.RFC3339))
	if len(n.unreported) > 0 {
		s += fmt.Sprintf("; %d other replica(s) to report their nodes (%v)", len(n.unreported), n.unreported)
	}
	return s
}
