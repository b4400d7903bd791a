package app_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/app"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/testkit"
)

// leaderTTL is the lease of a term in these tests: etcd's smallest.
const leaderTTL = 2 * time.Second

// replicaLoops is how many loops of a follower wait on its clock: the
// refusal summaries and, on etcd, the report of its nodes to a CA
// rotation (the other appLoops run on the leader).
const replicaLoops = 2

// leaderLoops is how many loops of the leader wait on its clock on etcd:
// appLoops and the report of its nodes.
const leaderLoops = appLoops + 1

// settleN blocks until n loops are parked on clk.
func settleN(t *testing.T, clk *clock.Fake, n int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
	defer cancel()
	if err := clk.WaitForWaiters(ctx, n); err != nil {
		t.Fatalf("loops did not park on the clock: %v", err)
	}
}

// caOf reads the CA state through m's admin API.
func caOf(m *mesh) api.CA {
	var c api.CA
	m.admin("GET", api.PathCA, nil, &c, http.StatusOK)
	return c
}

// TestLeaderKilledDuringCARotation runs two replicas on one etcd, each
// with its own fake clock moved in step. A root rotation is started and
// driven by the leader, which is killed in the middle of it (its lease is
// revoked, as etcd does when a dead replica's lease expires, and the
// process stops without handing anything over): once while the new root
// is being published, once after the leader switched issuance and
// re-issued the leaves. The other replica is elected, finishes the
// rotation from the state in etcd, and its nodes end on the new CA: every
// identity holds a certificate of the new issuer, and every node holds
// exactly that certificate and the new root.
func TestLeaderKilledDuringCARotation(t *testing.T) {
	e := testkit.StartEtcd(t)
	for _, tc := range []struct {
		name string
		// before is how far each step drives the rotation until it is in
		// phase, where the leader is killed.
		before time.Duration
		phase  string
	}{
		{"while publishing", time.Second, "publishing"},
		{"while reissuing", time.Minute, "reissuing"},
	} {
		t.Run(tc.name, func(t *testing.T) { leaderKilledDuringRotation(t, e, tc.before, tc.phase) })
	}
}

func leaderKilledDuringRotation(t *testing.T, e *testkit.Etcd, before time.Duration, phase string) {
	start := time.Now()
	prefix := "/meshca-ha/" + phase
	lead, follow, clocks := startClockedReplicas(t, e, prefix, start)
	if l := caOf(follow).Leader; l == nil || l.Self || l.Address != lead.app.XDS {
		t.Fatalf("the follower names the leader %+v, want %s", l, lead.app.XDS)
	}
	if out := follow.mustCLI("status"); !strings.Contains(out, " at "+lead.app.XDS+"\n") {
		t.Fatalf("meshca status on the follower does not name the leader %s:\n%s", lead.app.XDS, out)
	}
	// Both clocks move together; a replica's loops are parked before and
	// after each move.
	loops := map[*mesh]int{lead: leaderLoops, follow: replicaLoops}
	step := func(d time.Duration) {
		t.Helper()
		for m, n := range loops {
			settleN(t, clocks[m], n)
		}
		for m := range loops {
			clocks[m].Add(d)
		}
		for m, n := range loops {
			settleN(t, clocks[m], n)
		}
	}

	ids := []string{"echo", "web", "api", "db", "cache", "auth"}
	for _, id := range ids {
		follow.admin("POST", api.PathIdentities, api.AddIdentityRequest{Name: id, TTL: "1h"}, nil, http.StatusCreated)
	}
	// Two nodes on the replica that survives, each for three identities.
	type node struct {
		h    *holder
		ids  []string
		conn *grpc.ClientConn
	}
	var nodes []node
	for i, part := range [][]string{ids[:3], ids[3:]} {
		name := fmt.Sprintf("node-%d", i)
		names := []string{secretName("")}
		for _, id := range part {
			names = append(names, secretName(id))
		}
		cert := follow.joined(name, part...)
		h := &holder{p: subscribe(t, follow, name, cert, names...), secrets: map[string]*tlsv3.Secret{}}
		nodes = append(nodes, node{h, part, follow.dial(cert)})
	}
	old := caOf(follow)

	// The leader starts a root rotation and drives it.
	var started api.CA
	lead.admin("POST", api.PathCARotate, api.RotateCARequest{Root: true}, &started, http.StatusOK)
	if started.Rotation == nil || started.Rotation.Phase != "publishing" {
		t.Fatalf("rotation started as %+v", started.Rotation)
	}
	var r *api.CARotation
	// The phase is checked before each step: a rotation whose nodes all
	// acknowledged at once (on either replica) leaves publishing at the
	// leader's first tick, so "while publishing" is right after the start.
	for i := 0; ; i++ {
		if r = caOf(lead).Rotation; r != nil && r.Phase == phase {
			break
		}
		if i == 5 {
			t.Fatalf("the leader drove the rotation to %+v, want phase %s", r, phase)
		}
		step(before)
	}
	t.Logf("killing the leader in phase %s, %d of %d leaves re-issued", r.Phase, r.Reissued, r.Leaves)

	// Kill the leader: its lease goes (as on expiry), then the process.
	cli := e.Client()
	resp, err := cli.Get(context.Background(), prefix+"/leader/", clientv3.WithFirstCreate()...)
	if err != nil || len(resp.Kvs) == 0 {
		t.Fatalf("election key: %v (%d keys)", err, len(resp.Kvs))
	}
	killed := time.Now()
	if _, err := cli.Revoke(context.Background(), clientv3.LeaseID(resp.Kvs[0].Lease)); err != nil {
		t.Fatal(err)
	}
	lead.stop()
	delete(loops, lead)
	if !pollUntil(2*leaderTTL, 10*time.Millisecond, func() bool { l := caOf(follow).Leader; return l != nil && l.Self }) {
		t.Fatalf("the follower does not lead %s after the leader died", 2*leaderTTL)
	}
	t.Logf("leader killed mid-rotation: the other replica leads after %s", time.Since(killed).Round(time.Millisecond))
	loops[follow] = leaderLoops

	begin := clocks[follow].Now()
	renewed := false
	for i := 0; ; i++ {
		if i > 60 {
			t.Fatalf("rotation not finished by the new leader: %+v", caOf(follow).Rotation)
		}
		step(time.Minute)
		for _, n := range nodes {
			n.h.drain()
		}
		rot := caOf(follow).Rotation
		if rot == nil {
			break
		}
		if rot.OwnWorkDone && rot.OldNodeCerts > 0 && !renewed {
			// The nodes renew their node certificates under the new CA,
			// as `meshca bootstrap renew` does.
			ctx, cancel := context.WithTimeout(context.Background(), recvTimeout)
			for _, n := range nodes {
				if _, _, err := renewNode(t, ctx, n.conn); err != nil {
					t.Fatalf("node renewal during the rotation: %v", err)
				}
			}
			cancel()
			renewed = true
		}
	}
	after := caOf(follow)
	t.Logf("the new leader finished the root rotation in %s of fake time", clocks[follow].Now().Sub(begin))
	if after.Issuer.Serial == old.Issuer.Serial || len(after.Roots) != 1 || after.Roots[0].Serial == old.Roots[0].Serial {
		t.Fatalf("after the rotation: issuer %s (before %s), roots %+v (before %+v)", after.Issuer.Serial, old.Issuer.Serial, after.Roots, old.Roots)
	}
	if l := after.Leader; l == nil || !l.Self {
		t.Fatalf("leader after the rotation: %+v", l)
	}

	// No certificate lost: every identity holds a valid certificate of the
	// new issuer, and every node holds exactly those and the new root.
	serials := map[string]string{}
	var got []api.Identity
	follow.admin("GET", api.PathIdentities, nil, &got, http.StatusOK)
	for _, id := range got {
		if id.Cert == nil || id.Cert.State != "valid" || id.Cert.IssuerSerial != after.Issuer.Serial {
			t.Errorf("identity %s ends with %+v, want a valid certificate of issuer %s", id.Name, id.Cert, after.Issuer.Serial)
			continue
		}
		serials[id.Name] = id.Cert.Serial
	}
	if len(serials) != len(ids) {
		t.Fatalf("%d of %d identities hold a certificate of the new issuer", len(serials), len(ids))
	}
	roots := []string{after.Roots[0].Serial}
	for _, n := range nodes {
		n.h.await(t, fmt.Sprintf("node with %v holds the new leaves and root %v", n.ids, roots), func() bool {
			for _, id := range n.ids {
				if !n.h.holds(t, id, serials[id]) {
					return false
				}
			}
			return slices.Equal(bundleSerials(t, n.h), roots)
		})
	}
	t.Logf("%d identities re-issued under the new CA, %d nodes on it", len(serials), len(nodes))
}

// startClockedReplicas starts two replicas on e under prefix, sharing one
// key-encryption key, each with its own fake clock starting at start, and
// returns the one that leads, the other and their clocks.
func startClockedReplicas(t *testing.T, e *testkit.Etcd, prefix string, start time.Time) (lead, follow *mesh, clocks map[*mesh]*clock.Fake) {
	t.Helper()
	onEtcd := func(c *config.Config) { c.Store.Etcd = config.Etcd{Endpoints: []string{e.Endpoint}, Prefix: prefix} }
	clocks = map[*mesh]*clock.Fake{}
	var meshes []*mesh
	for i := range 2 {
		dir := filepath.Join(t.TempDir(), fmt.Sprint(i))
		if i > 0 { // every replica has the same key-encryption key
			if err := os.MkdirAll(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			kek, err := os.ReadFile(filepath.Join(meshes[0].dir, app.KEKFile))
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(dir, app.KEKFile), kek, 0o600); err != nil {
				t.Fatal(err)
			}
		}
		clk := clock.NewFake(start)
		m := startMeshWith(t, clk, dir, onEtcd, app.WithLeaderTTL(leaderTTL))
		clocks[m] = clk
		meshes = append(meshes, m)
	}
	if !pollUntil(10*time.Second, 20*time.Millisecond, func() bool {
		for _, m := range meshes {
			if l := caOf(m).Leader; l != nil && l.Self {
				lead = m
			}
		}
		return lead != nil
	}) {
		t.Fatal("no replica leads 10s after both started")
	}
	follow = meshes[0]
	if follow == lead {
		follow = meshes[1]
	}
	return lead, follow, clocks
}
