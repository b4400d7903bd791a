package xds

import (
	"context"
	"fmt"
	"math/rand/v2"
	"testing"

	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// TestPendingCountsMatchAWalk: the connected and pending counts a CA
// rotation reads every second are kept as streams open and close and
// nodes subscribe, are published and acknowledge; after every step of a
// random sequence they equal a walk over every node's status.
func TestPendingCountsMatchAWalk(t *testing.T) {
	f := newFixture(t)
	c := f.s.cb
	rng := rand.New(rand.NewPCG(1, 2))
	nodes := []string{"n1", "n2", "n3", "n4"}
	open := map[streamKey]string{}
	walk := func() (pending, connected int) {
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, st := range c.status {
			if st.streams == 0 {
				continue
			}
			connected++
			if st.secrets && st.acked[resource.SecretType] != st.published[resource.SecretType].version {
				pending++
			}
		}
		return pending, connected
	}
	seen := map[[2]int]bool{}
	for step := range 2000 {
		node := nodes[rng.IntN(len(nodes))]
		version := fmt.Sprint(rng.IntN(3))
		var did string
		switch rng.IntN(6) {
		case 0:
			id := streamKey{id: int64(step)}
			if err := c.open(context.WithValue(t.Context(), nodeKey{}, node), id, resource.AnyType); err != nil {
				t.Fatal(err)
			}
			open[id] = node
			did = "open"
		case 1:
			for id := range open {
				c.closed(id)
				delete(open, id)
				break
			}
			did = "close"
		case 2:
			c.subscribedSecrets(node)
			did = "subscribe"
		case 3:
			c.published(node, map[string]string{resource.SecretType: version, resource.ClusterType: version})
			did = "publish " + version
		case 4:
			c.track(node, resource.SecretType, version, "")
			did = "ack " + version
		case 5:
			c.track(node, resource.SecretType, "", "rejected")
			did = "nack"
		}
		p, n := c.pending()
		wp, wn := walk()
		if p != wp || n != wn {
			t.Fatalf("step %d (%s %s): pending %d of %d connected, a walk says %d of %d", step, did, node, p, n, wp, wn)
		}
		seen[[2]int{p, n}] = true
	}
	// The sequence went through many states, not one.
	if len(seen) < 8 {
		t.Fatalf("only %d distinct (pending, connected) states seen", len(seen))
	}
	t.Logf("%d distinct (pending, connected) states, each equal to a walk", len(seen))
}
