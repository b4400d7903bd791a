package app_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
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
	version          string
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
			got := received{version: r.GetVersionInfo()}
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
			t.Fatalf("%s: waited %s in vain for %s", c.name, recvTimeout, what)
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
	// count runs change, waits until every node in changed has received
	// what it brings, then closes the count with a barrier and returns how
	// many responses each node received for the change alone.
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
			for i, r := range got {
				if !lists(t, r.crl, res.Serials) {
					continue
				}
				if i != len(got)-1 {
					t.Fatalf("%s: %s received %d responses after the one with the barrier's CRL", what, n, len(got)-1-i)
				}
				out[n] = i
				if ok := changed[n]; ok != nil && i == 0 && !ok(last[n], r) {
					t.Fatalf("%s: %s received neither the change nor the barrier's CRL", what, n)
				}
				break
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

// TestRootSwitchSendsOnlyTheNewLeaf counts the responses of the step of a
// root rotation that switches issuance to the new root and re-issues every
// leaf under it, on a mesh with nothing revoked: the bundle keeps the same
// two roots (the new one now signs), so each node needs its new leaf and
// nothing else. Counted as in TestOneResponsePerChange, from the response
// that brought the new root to the barrier's.
func TestRootSwitchSendsOnlyTheNewLeaf(t *testing.T) {
	clk := clock.NewFake(time.Now())
	m := startMesh(t, clk)
	for _, id := range []string{"web", "api", "barrier"} {
		m.addIdentity(id)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	nodes := map[string]*countingNode{"n1": startCountingNode(t, ctx, m, "n1", "web"), "n2": startCountingNode(t, ctx, m, "n2", "api")}
	first := map[string]received{}
	for n, c := range nodes {
		c.waitFor(t, 0, "first response", func(received) bool { return true })
		first[n] = c.responses()[0]
	}
	m.admin("POST", api.PathCARotate, api.RotateCARequest{Root: true}, nil, http.StatusOK)
	published := map[string]int{}
	for n, c := range nodes {
		c.waitFor(t, 1, "the new root", func(r received) bool { return len(r.roots) > len(first[n].roots) })
		published[n] = len(c.responses())
	}
	// Once the server has every node's ACK of the new root, one step
	// switches and re-issues.
	for n, c := range nodes {
		v := c.responses()[published[n]-1].version
		for deadline := time.Now().Add(recvTimeout); acked(m, n) != v; {
			if time.Now().After(deadline) {
				t.Fatalf("%s: the server did not record the ACK of the new root within %s", n, recvTimeout)
			}
		}
	}
	// The rotation's tick reads the ACK counts as the xDS server keeps
	// them; a tick that ran just before the last ACK was counted waits for
	// the next, so the clock moves a second at a time until the switch.
	for i := 0; ; i++ {
		advance(t, clk, time.Second)
		if pollUntil(2*time.Second, 10*time.Millisecond, func() bool {
			r := caOf(m).Rotation
			return r != nil && r.Phase != "publishing"
		}) {
			break
		}
		if i == 10 {
			t.Fatalf("the rotation still publishes %d s of fake time after every node acknowledged the new root: %+v", i+1, caOf(m).Rotation)
		}
	}
	for n, c := range nodes {
		c.waitFor(t, published[n], "its leaf under the new root", func(r received) bool { return r.leaf != first[n].leaf })
	}
	var res api.Revoked
	m.admin("POST", api.PathRevoke+"/barrier?wait=pushed&timeout=30s", api.RevokeRequest{Reason: "test"}, &res, http.StatusOK)
	if p := res.Pushed; p == nil || !p.Complete || p.Have != len(nodes) {
		t.Fatalf("the barrier's CRL reached %+v, want every node", res.Pushed)
	}
	for n, c := range nodes {
		got := c.responses()[published[n]:]
		if len(got) == 0 || !lists(t, got[len(got)-1].crl, res.Serials) {
			t.Fatalf("%s: the last of %d responses is not the barrier's", n, len(got))
		}
		if switched := len(got) - 1; switched != 1 {
			t.Errorf("%s received %d responses for the switch and its re-issue, want 1", n, switched)
		} else {
			t.Logf("%s: 1 response for the switch and its re-issue", n)
		}
	}
}

// lists reports whether the CRLs in crlPEM list one of the serials (hex).
func lists(t *testing.T, crlPEM string, serials []string) bool {
	t.Helper()
	want := map[string]bool{}
	for _, s := range serials {
		n, ok := new(big.Int).SetString(s, 16)
		if !ok {
			t.Fatalf("serial %q is not hex", s)
		}
		want[n.Text(16)] = true
	}
	for rest := []byte(crlPEM); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return false
		}
		crl, err := x509.ParseRevocationList(b.Bytes)
		if err != nil {
			t.Fatalf("CRL: %v", err)
		}
		for _, e := range crl.RevokedCertificateEntries {
			if want[e.SerialNumber.Text(16)] {
				return true
			}
		}
	}
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
