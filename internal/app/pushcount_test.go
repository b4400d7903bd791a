package app_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshca/meshca/internal/api"
	"github.com/meshca/meshca/internal/clock"
)

// received is what one response of a node's secrets stream held.
type received struct {
	roots, crl, leaf string // bundle PEM, CRL PEM, identity chain PEM
}

// countingNode is a node's ADS stream for the trust bundle and one
// identity secret that acknowledges every response, as Envoy does, and
// keeps what each one held, in order.
type countingNode struct {
	name string
	mu   sync.Mutex
	got  []received
	more chan struct{} // closed and replaced at every response
	fail chan error
}

func startCountingNode(t *testing.T, ctx context.Context, m *mesh, node, identity string) *countingNode {
	t.Helper()
	names := []string{secretName(""), secretName(identity)}
	s, err := discovery.NewAggregatedDiscoveryServiceClient(m.dial(m.joined(node, identity))).StreamAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&discovery.DiscoveryRequest{Node: &core.Node{Id: node}, TypeUrl: resource.SecretType, ResourceNames: names}); err != nil {
		t.Fatal(err)
	}
	c := &countingNode{name: node, more: make(chan struct{}), fail: make(chan error, 1)}
	go func() {
		for {
			r, err := s.Recv()
			if err != nil {
				c.fail <- err
				return
			}
			var got received
			for _, a := range r.GetResources() {
				var sec tlsv3.Secret
				if err := a.UnmarshalTo(&sec); err != nil {
					c.fail <- err
					return
				}
				if vc := sec.GetValidationContext(); vc != nil {
					got.roots, got.crl = string(vc.GetTrustedCa().GetInlineBytes()), string(vc.GetCrl().GetInlineBytes())
				} else {
					got.leaf = string(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
				}
			}
			c.mu.Lock()
			c.got = append(c.got, got)
			close(c.more)
			c.more = make(chan struct{})
			c.mu.Unlock()
			if err := s.Send(&discovery.DiscoveryRequest{TypeUrl: r.GetTypeUrl(), VersionInfo: r.GetVersionInfo(), ResponseNonce: r.GetNonce(), ResourceNames: names}); err != nil {
				c.fail <- err
				return
			}
		}
	}()
	return c
}

// waitFor waits until the node has received a response, after the first
// from responses, for which ok holds.
func (c *countingNode) waitFor(t *testing.T, from int, what string, ok func(received) bool) {
	t.Helper()
	deadline := time.After(recvTimeout)
	for {
		c.mu.Lock()
		more := c.more
		for _, r := range c.got[min(from, len(c.got)):] {
			if ok(r) {
				c.mu.Unlock()
				return
			}
		}
		c.mu.Unlock()
		select {
		case <-more:
		case err := <-c.fail:
			t.Fatalf("%s: stream ended waiting for %s: %v", c.name, what, err)
		case <-deadline:
			t.Fatalf("%s: no %s within %s", c.name, what, recvTimeout)
		}
	}
}

func (c *countingNode) responses() []received {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]received(nil), c.got...)
}

// TestOneResponsePerChange counts, over real loopback streams that
// acknowledge as Envoy does, the responses each node receives for one
// change: a root rotation publishing its new root, the re-key of one
// identity, the re-key of every identity, a revocation. Each count is
// closed by a barrier: a revocation of an identity no node holds, answered
// with wait=pushed once every connected node has acknowledged the CRL it
// brings, so that every push the change caused (before or together with
// the barrier's) has arrived. The clock is fake and stands still, so that
// the rotation takes no further step of its own.
func TestOneResponsePerChange(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	for _, id := range []string{"web", "api", "barrier-1", "barrier-2", "barrier-3", "barrier-4"} {
		m.addIdentity(id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	holds := map[string]string{"n1": "web", "n2": "web", "n3": "api"}
	nodes := map[string]*countingNode{}
	for _, n := range []string{"n1", "n2", "n3"} {
		nodes[n] = startCountingNode(t, ctx, m, n, holds[n])
		nodes[n].waitFor(t, 0, "first response", func(received) bool { return true })
	}

	barriers := 0
	// count runs change, waits until every node in changed holds what it
	// brings (by want), then closes the count with a barrier and returns
	// how many responses each node received for the change alone.
	count := func(what string, change func(), changed map[string]func(before, now received) bool) map[string]int {
		t.Helper()
		start, last := map[string]int{}, map[string]received{}
		for n, c := range nodes {
			got := c.responses()
			start[n], last[n] = len(got), got[len(got)-1]
		}
		change()
		for n, ok := range changed {
			nodes[n].waitFor(t, start[n], what, func(r received) bool { return ok(last[n], r) })
		}
		barriers++
		var res api.Revoked
		m.admin("POST", fmt.Sprintf("%s/barrier-%d?wait=pushed&timeout=30s", api.PathRevoke, barriers), api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
		if p := res.Pushed; p == nil || !p.Complete || p.Nodes != len(nodes) || p.Have != len(nodes) {
			t.Fatalf("%s: the barrier's CRL reached %+v, want every node", what, res.Pushed)
		}
		out := map[string]int{}
		for n, c := range nodes {
			got := c.responses()[start[n]:]
			// The barrier's CRL comes in exactly one response, the last;
			// a push of the change still pending might have been merged
			// into it, which would only lower the count.
			crl := last[n].crl
			for i, r := range got {
				if r.crl != crl {
					if i != len(got)-1 {
						t.Fatalf("%s: %s received %d responses after the one with the barrier's CRL", what, n, len(got)-1-i)
					}
					out[n] = i
					if ok := changed[n]; ok != nil && i == 0 && !ok(last[n], r) {
						t.Fatalf("%s: %s received neither the change nor the barrier's CRL", what, n)
					}
				}
			}
			if _, ok := out[n]; !ok {
				t.Fatalf("%s: %s never received the barrier's CRL (%d responses)", what, n, len(got))
			}
		}
		t.Logf("%s: responses per node %v", what, out)
		return out
	}
	newRoot := func(before, now received) bool { return len(now.roots) > len(before.roots) }
	newLeaf := func(before, now received) bool { return now.leaf != "" && now.leaf != before.leaf }
	want := func(what string, got, want map[string]int) {
		t.Helper()
		for n, w := range want {
			if got[n] != w {
				t.Errorf("%s: %s received %d responses, want %d", what, n, got[n], w)
			}
		}
	}

	got := count("root rotation publishes a new root", func() {
		m.admin("POST", api.PathCARotate, api.RotateCARequest{Root: true}, nil, http.StatusOK)
	}, map[string]func(before, now received) bool{"n1": newRoot, "n2": newRoot, "n3": newRoot})
	want("root rotation", got, map[string]int{"n1": 1, "n2": 1, "n3": 1})

	got = count("re-key of web", func() {
		m.admin("POST", api.PathReissue+"/web", struct{}{}, nil, http.StatusOK)
	}, map[string]func(before, now received) bool{"n1": newLeaf, "n2": newLeaf})
	want("re-key of web", got, map[string]int{"n1": 1, "n2": 1, "n3": 0})

	got = count("re-key of every identity", func() { reissueEvery(t, m) },
		map[string]func(before, now received) bool{"n1": newLeaf, "n2": newLeaf, "n3": newLeaf})
	want("re-key of every identity", got, map[string]int{"n1": 1, "n2": 1, "n3": 1})

	// A revocation is a trust change like the barrier's: counted as the
	// barrier's response itself, it is one.
	got = count("revocation of an unassigned identity", func() {}, nil)
	want("revocation", got, map[string]int{"n1": 0, "n2": 0, "n3": 0})
}

// reissueEvery calls POST /v1/reissue {"all":true} and reads its answer to
// the last line.
func reissueEvery(t *testing.T, m *mesh) {
	t.Helper()
	b, err := json.Marshal(api.ReissueAllRequest{All: true})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := m.http.Post("http://"+m.app.Admin+api.PathReissue, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var last api.ReissueProgress
	for sc := bufio.NewScanner(resp.Body); sc.Scan(); {
		if err := json.Unmarshal(sc.Bytes(), &last); err != nil {
			t.Fatal(err)
		}
	}
	if !last.Finished || last.Failed != 0 || last.Error != "" {
		t.Fatalf("reissue --all: %+v", last)
	}
}
