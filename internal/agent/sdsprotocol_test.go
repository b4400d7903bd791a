package agent_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resource "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/agent"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/nodeapi"
)

// sdsAgent is an agent serving SDS on a socket in t.TempDir(), against the
// signing meshca of renewcost_test.go: n identities svc-000..., renewed
// only when the test switches the issuer (the fake clock never moves).
type sdsAgent struct {
	m      *signingMeshca
	a      *agent.Agent
	socket string
	logs   *logRecorder
	st     agent.State
}

func startSDSAgent(t *testing.T, n int) *sdsAgent {
	t.Helper()
	m := newSigningMeshca(t, n)
	conn := m.start(t)
	socket := filepath.Join(t.TempDir(), "sds.sock")
	logs := newLogRecorder(t)
	a := startAgent(t, agent.Config{Conn: conn, Node: "bench-node", TrustDomain: td, SDSSocket: socket, Clock: clock.NewFake(time.Now()), Logger: slog.New(logs)})
	first, _ := m.answer()
	st := waitRenewed(t, a, n, first.IssuerSerial, agent.State{})
	return &sdsAgent{m: m, a: a, socket: socket, logs: logs, st: st}
}

// renewAll switches the issuer and waits until the agent re-keyed every
// identity.
func (s *sdsAgent) renewAll(t *testing.T) {
	t.Helper()
	serial := s.m.switchIssuer()
	s.st = waitRenewed(t, s.a, len(s.st.SVIDs), serial, s.st)
}

// setIdentities changes what meshca assigns, as an assignment, a selector
// change or an unassignment does, and pushes it on the identity watch.
func (m *signingMeshca) setIdentities(ids []nodeapi.AssignedIdentity) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.identities = ids
	close(m.changed)
	m.changed = make(chan struct{})
}

func svc(i int) string { return idName(fmt.Sprintf("svc-%03d", i)) }

// recvWithin runs recv, failing the test if it does not return within
// waitLimit.
func recvWithin[T any](t *testing.T, what string, recv func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		v, err := recv()
		ch <- result{v, err}
	}()
	select {
	case r := <-ch:
		return r.v, r.err
	case <-time.After(waitLimit):
		t.Fatalf("%s: nothing within %s", what, waitLimit)
		var zero T
		return zero, nil
	}
}

// rawSotW is a state-of-the-world stream whose every request is the test's.
type rawSotW struct {
	t      *testing.T
	name   string
	stream secretv3.SecretDiscoveryService_StreamSecretsClient
}

func openRawSotW(t *testing.T, socket, name string) *rawSotW {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := sdsClient(t, socket).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &rawSotW{t: t, name: name, stream: stream}
}

// send sends a request; nack, when set, makes it a NACK with that message.
func (r *rawSotW) send(names []string, version, nonce, nack string) {
	r.t.Helper()
	req := &discoveryv3.DiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, TypeUrl: resource.SecretType, ResourceNames: names, VersionInfo: version, ResponseNonce: nonce}
	if nack != "" {
		req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: nack}
	}
	if err := r.stream.Send(req); err != nil {
		r.t.Fatalf("%s: send: %v", r.name, err)
	}
}

// ack acknowledges resp, naming names.
func (r *rawSotW) ack(names []string, resp *discoveryv3.DiscoveryResponse) {
	r.t.Helper()
	r.send(names, resp.GetVersionInfo(), resp.GetNonce(), "")
}

// recv returns the next answer and its secrets by name.
func (r *rawSotW) recv() (*discoveryv3.DiscoveryResponse, map[string]*tlsv3.Secret) {
	r.t.Helper()
	resp, err := recvWithin(r.t, r.name, r.stream.Recv)
	if err != nil {
		r.t.Fatalf("%s: %v", r.name, err)
	}
	if resp.GetNonce() == "" || resp.GetVersionInfo() == "" || resp.GetTypeUrl() != resource.SecretType {
		r.t.Fatalf("%s: answer without a nonce, a version or the secret type: %q %q %q", r.name, resp.GetNonce(), resp.GetVersionInfo(), resp.GetTypeUrl())
	}
	return resp, secretsOf(r.t, resp.GetResources())
}

func namesOf(m map[string]*tlsv3.Secret) []string {
	out := make([]string, 0, len(m))
	for n := range m {
		out = append(out, n)
	}
	slices.Sort(out)
	return out
}

func sortedNames(names ...string) []string {
	names = slices.Clone(names)
	slices.Sort(names)
	return names
}

// TestAgentSDSStateOfTheWorld: raw state-of-the-world streams on the
// agent's socket, as Envoy opens them. An ACK (even repeated, or with an
// unknown nonce) is answered with nothing; a renewal of a certificate is
// pushed to the stream naming it and not to a stream naming only the
// bundle; a request naming other secrets is answered at once; a NACK is
// logged (without the PEM it quotes) and not answered again until the
// secret changes; a fetch at the current version gets the "up to date"
// answer.
func TestAgentSDSStateOfTheWorld(t *testing.T) {
	s := startSDSAgent(t, 2)
	bundleOnly := []string{bundleName}

	b := openRawSotW(t, s.socket, "bundle stream")
	b.send(bundleOnly, "", "", "")
	b1, got := b.recv()
	if !slices.Equal(namesOf(got), bundleOnly) {
		t.Fatalf("bundle stream answered %v", namesOf(got))
	}
	// ACKs, the same ACK again, and an unknown nonce: none is answered.
	b.ack(bundleOnly, b1)
	b.ack(bundleOnly, b1)
	b.send(bundleOnly, b1.GetVersionInfo(), "no-such-nonce", "")

	w := openRawSotW(t, s.socket, "svc-000 stream")
	w.send([]string{svc(0)}, "", "", "")
	w1, got := w.recv()
	old, _ := s.st.SVID("svc-000")
	if !slices.Equal(namesOf(got), []string{svc(0)}) || serial(leafOf(t, got[svc(0)])) != old.Serial {
		t.Fatalf("svc-000 stream answered %v", namesOf(got))
	}
	w.ack([]string{svc(0)}, w1)

	// Every certificate renews: the stream naming svc-000 is pushed the
	// new one.
	s.renewAll(t)
	w2, got := w.recv()
	renewed, _ := s.st.SVID("svc-000")
	if serial(leafOf(t, got[svc(0)])) != renewed.Serial || w2.GetVersionInfo() == w1.GetVersionInfo() || w2.GetNonce() == w1.GetNonce() {
		t.Fatalf("svc-000 stream after the renewal: serial %s version %s nonce %s; want %s and a new version and nonce",
			serial(leafOf(t, got[svc(0)])), w2.GetVersionInfo(), w2.GetNonce(), renewed.Serial)
	}

	// The bundle stream was sent nothing since its first answer: neither
	// for its ACKs nor for the renewal. Its next answer is the one to its
	// new request, at once.
	both := sortedNames(bundleName, svc(1))
	b.send(both, b1.GetVersionInfo(), b1.GetNonce(), "")
	b2, got := b.recv()
	if !slices.Equal(namesOf(got), both) {
		t.Fatalf("bundle stream: the answer after its ACKs and a renewal serves %v; want %v (the answer to its new request): it was sent something it did not ask for", namesOf(got), both)
	}
	if b2.GetVersionInfo() == b1.GetVersionInfo() {
		t.Fatalf("bundle stream: new request answered with the old version %s", b1.GetVersionInfo())
	}

	// A NACK is logged and not answered: the next answer is the one to
	// the following request.
	mark := s.logs.count()
	const quoted = "cannot load -----BEGIN PRIVATE KEY-----MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg"
	w.send([]string{svc(0)}, w1.GetVersionInfo(), w2.GetNonce(), quoted)
	rec := s.logs.waitFor(t, mark, slog.LevelWarn, "rejected")
	var detail string
	rec.Attrs(func(a slog.Attr) bool {
		if a.Key == "detail" {
			detail = a.Value.String()
		}
		return true
	})
	if strings.Contains(detail, "PRIVATE KEY") || detail == "" {
		t.Fatalf("NACK logged with detail %q: want it withheld", detail)
	}
	two := sortedNames(svc(0), svc(1))
	w.send(two, w2.GetVersionInfo(), w2.GetNonce(), "")
	w3, got := w.recv()
	if !slices.Equal(namesOf(got), two) {
		t.Fatalf("svc-000 stream: the answer after a NACK serves %v; want %v (the answer to its new request): the NACKed answer was sent again", namesOf(got), two)
	}
	w.ack(two, w3)

	// Fetch: the named secrets; at the current version, "up to date".
	ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
	defer cancel()
	c := sdsClient(t, s.socket)
	f, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{svc(1), bundleName}})
	if err != nil {
		t.Fatal(err)
	}
	if got := namesOf(secretsOf(t, f.GetResources())); !slices.Equal(got, both) {
		t.Fatalf("fetch served %v, want %v", got, both)
	}
	_, err = c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{svc(1)}, VersionInfo: f.GetVersionInfo()})
	if err == nil || !strings.Contains(status.Convert(err).Message(), "up to date") {
		t.Fatalf("fetch at the current version %s: %v, want the up-to-date answer", f.GetVersionInfo(), err)
	}
	t.Logf("answers: bundle stream 2 (first, its new request), svc-000 stream 3 (first, renewal, its new request); ACKs, an unknown nonce, a NACK and a renewal of a secret not named sent nothing")
}

// rawDelta is a delta stream whose every request is the test's.
type rawDelta struct {
	t      *testing.T
	name   string
	stream secretv3.SecretDiscoveryService_DeltaSecretsClient
}

func openRawDelta(t *testing.T, socket, name string) *rawDelta {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	stream, err := sdsClient(t, socket).DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return &rawDelta{t: t, name: name, stream: stream}
}

func (r *rawDelta) send(req *discoveryv3.DeltaDiscoveryRequest) {
	r.t.Helper()
	req.TypeUrl = resource.SecretType
	if err := r.stream.Send(req); err != nil {
		r.t.Fatalf("%s: send: %v", r.name, err)
	}
}

// recv returns the next answer, its secrets' versions by name, and what it
// removes.
func (r *rawDelta) recv() (*discoveryv3.DeltaDiscoveryResponse, map[string]string, []string) {
	r.t.Helper()
	resp, err := recvWithin(r.t, r.name, r.stream.Recv)
	if err != nil {
		r.t.Fatalf("%s: %v", r.name, err)
	}
	if resp.GetNonce() == "" || resp.GetTypeUrl() != resource.SecretType {
		r.t.Fatalf("%s: answer without a nonce or the secret type", r.name)
	}
	versions := map[string]string{}
	for _, res := range resp.GetResources() {
		s := new(tlsv3.Secret)
		if err := res.GetResource().UnmarshalTo(s); err != nil || s.GetName() != res.GetName() || res.GetVersion() == "" {
			r.t.Fatalf("%s: resource %q (version %q) holds secret %q: %v", r.name, res.GetName(), res.GetVersion(), s.GetName(), err)
		}
		versions[res.GetName()] = res.GetVersion()
	}
	return resp, versions, sortedNames(resp.GetRemovedResources()...)
}

func keys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestAgentSDSDelta: raw delta streams on the agent's socket. Only what
// changed is sent, with per-secret versions; initial_resource_versions are
// honoured; a secret the caller may no longer have (its selectors now name
// another uid) and one the node lost (unassigned) are sent as removed; a
// NACK and an ACK are answered with nothing; a renewal sends only the
// renewed secrets the stream holds.
func TestAgentSDSDelta(t *testing.T) {
	s := startSDSAgent(t, 3)
	d := openRawDelta(t, s.socket, "delta")
	d.send(&discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: "envoy"}, ResourceNamesSubscribe: []string{svc(0), svc(1)}})
	d1, v1, removed := d.recv()
	if got := keys(v1); !slices.Equal(got, sortedNames(svc(0), svc(1))) || len(removed) != 0 {
		t.Fatalf("first delta answer: %v, removed %v", got, removed)
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: d1.GetNonce()}) // ACK

	// A second stream that holds svc-000 at the version just sent and
	// svc-001 at a stale one is sent svc-001 and the bundle only.
	d2 := openRawDelta(t, s.socket, "delta with initial versions")
	d2.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{svc(0), svc(1), bundleName},
		InitialResourceVersions: map[string]string{svc(0): v1[svc(0)], svc(1): "stale"}})
	_, v2, removed := d2.recv()
	if got := keys(v2); !slices.Equal(got, sortedNames(svc(1), bundleName)) || len(removed) != 0 {
		t.Fatalf("delta with initial versions: sent %v, removed %v; want svc-001 and the bundle only", got, removed)
	}
	if v2[svc(1)] != v1[svc(1)] {
		t.Fatalf("svc-001 has version %s on one stream and %s on the other", v2[svc(1)], v1[svc(1)])
	}

	// svc-001's selectors now name another uid: removed, on both streams.
	other := []string{fmt.Sprintf("uid:%d", os.Getuid()+1)}
	s.m.setIdentities([]nodeapi.AssignedIdentity{{Name: "svc-000", SPIFFEID: svc(0)}, {Name: "svc-001", SPIFFEID: svc(1), Selectors: other}, {Name: "svc-002", SPIFFEID: svc(2)}})
	for _, r := range []*rawDelta{d, d2} {
		_, sent, removed := r.recv()
		if len(sent) != 0 || !slices.Equal(removed, []string{svc(1)}) {
			t.Fatalf("%s after svc-001 went to another uid: sent %v, removed %v; want svc-001 removed", r.name, keys(sent), removed)
		}
	}
	// svc-000 unassigned: removed.
	s.m.setIdentities([]nodeapi.AssignedIdentity{{Name: "svc-001", SPIFFEID: svc(1), Selectors: other}, {Name: "svc-002", SPIFFEID: svc(2)}})
	d3, sent, removed := d.recv()
	if len(sent) != 0 || !slices.Equal(removed, []string{svc(0)}) {
		t.Fatalf("after svc-000 was unassigned: sent %v, removed %v; want svc-000 removed", keys(sent), removed)
	}
	s.st = waitState(t, s.a, "svc-000 dropped", func(st agent.State) bool { _, ok := st.SVID("svc-000"); return !ok })

	// A NACK is answered with nothing: the next answer is the one to the
	// next subscription.
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: d3.GetNonce(), ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "rejected"}})
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{svc(2)}})
	d4, sent, removed := d.recv()
	if got := keys(sent); !slices.Equal(got, []string{svc(2)}) || len(removed) != 0 {
		t.Fatalf("after a NACK and a subscription to svc-002: sent %v, removed %v; want svc-002 only", got, removed)
	}
	d.send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: d4.GetNonce()})

	// A renewal of every certificate sends the stream only svc-002, the
	// one it holds (svc-001 is another uid's, svc-000 gone).
	s.renewAll(t)
	_, sent, removed = d.recv()
	if got := keys(sent); !slices.Equal(got, []string{svc(2)}) || len(removed) != 0 || sent[svc(2)] == d4.GetResources()[0].GetVersion() {
		t.Fatalf("after a renewal: sent %v, removed %v; want svc-002 at a new version", got, removed)
	}
	t.Logf("delta: initial versions honoured (1 of 2 held secrets not resent), loss of permission and unassignment sent as removals, NACK and ACK answered with nothing, renewal sent 1 secret of the node's 2")
}

// TestAgentSDSHostileRequests: a local client floods one stream with
// requests naming 4096 secrets each, with unknown nonces and repeats; it
// is sent nothing for them, its next real request is answered at once, and
// a fetch on another connection meanwhile is answered. Requests naming
// more than 4096 secrets, larger than 4 MiB, or for another type are
// refused and end the stream.
func TestAgentSDSHostileRequests(t *testing.T) {
	s := startSDSAgent(t, 1)
	const maxNames, flood = 4096, 200
	h := openRawSotW(t, s.socket, "hostile stream")
	h.send([]string{bundleName}, "", "", "")
	h1, _ := h.recv()
	many := slices.Repeat([]string{bundleName}, maxNames)

	// A fetch on another connection while the flood runs.
	var (
		wg       sync.WaitGroup
		fetchErr error
		fetchMax time.Duration
	)
	stop := make(chan struct{})
	c := sdsClient(t, s.socket)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
			start := time.Now()
			_, err := c.FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{TypeUrl: resource.SecretType, ResourceNames: []string{svc(0)}})
			cancel()
			if err != nil {
				fetchErr = err
				return
			}
			fetchMax = max(fetchMax, time.Since(start))
		}
	}()
	start := time.Now()
	for i := range flood {
		nonce := fmt.Sprintf("garbage-%d", i)
		if i%2 == 1 {
			nonce = h1.GetNonce() // the current nonce, the same names: an ACK
		}
		h.send(many, h1.GetVersionInfo(), nonce, "")
	}
	// The next answer is the one to this request: nothing was sent for
	// the flood.
	probe := sortedNames(bundleName, svc(0))
	h.send(probe, h1.GetVersionInfo(), h1.GetNonce(), "")
	_, got := h.recv()
	took := time.Since(start)
	close(stop)
	wg.Wait()
	if !slices.Equal(namesOf(got), probe) {
		t.Fatalf("after the flood the stream was answered %v; want %v, the answer to its real request", namesOf(got), probe)
	}
	if fetchErr != nil {
		t.Fatalf("a fetch on another connection during the flood: %v", fetchErr)
	}
	t.Logf("flood: %d requests of %d names (half unknown nonces, half repeated ACKs) handled in %s (%s per request), 0 answers sent; slowest fetch on another connection meanwhile %s",
		flood, maxNames, took.Round(time.Millisecond), (took / flood).Round(time.Microsecond), fetchMax.Round(time.Millisecond))

	refused := func(what string, code codes.Code, open func() error) {
		t.Helper()
		if err := open(); status.Code(err) != code {
			t.Fatalf("%s: %v, want %s", what, err, code)
		} else {
			t.Logf("%s: %s (%.120s)", what, code, status.Convert(err).Message())
		}
	}
	tooMany := slices.Repeat([]string{bundleName}, maxNames+1)
	sotwOnce := func(req *discoveryv3.DiscoveryRequest) func() error {
		return func() error {
			r := openRawSotW(t, s.socket, "refused stream")
			if err := r.stream.Send(req); err != nil {
				return err
			}
			_, err := recvWithin(t, "refused stream", r.stream.Recv)
			return err
		}
	}
	refused("state of the world naming 4097 secrets", codes.ResourceExhausted, sotwOnce(&discoveryv3.DiscoveryRequest{ResourceNames: tooMany}))
	huge := slices.Repeat([]string{bundleName + "/" + strings.Repeat("x", 4096)}, 1100)
	refused("a request of 4.5 MB", codes.ResourceExhausted, sotwOnce(&discoveryv3.DiscoveryRequest{ResourceNames: huge}))
	refused("a request for listeners", codes.InvalidArgument, sotwOnce(&discoveryv3.DiscoveryRequest{TypeUrl: resource.ListenerType, ResourceNames: []string{bundleName}}))
	refused("delta naming 4097 secrets", codes.ResourceExhausted, func() error {
		r := openRawDelta(t, s.socket, "refused delta")
		r.send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: tooMany})
		_, err := recvWithin(t, "refused delta", r.stream.Recv)
		return err
	})
	refused("fetch naming 4097 secrets", codes.ResourceExhausted, func() error {
		ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
		defer cancel()
		_, err := sdsClient(t, s.socket).FetchSecrets(ctx, &discoveryv3.DiscoveryRequest{ResourceNames: tooMany})
		return err
	})
}

// A request carrying an older answer's nonce is not answered, even when it
// names other secrets: Envoy sends one while the answer to its newer
// request is in flight, and only the request after that answer counts.
func TestAgentSDSStaleNonceWithOtherNames(t *testing.T) {
	s := startSDSAgent(t, 2)
	r := openRawSotW(t, s.socket, "stream")
	r.send([]string{svc(0)}, "", "", "")
	first, _ := r.recv()
	// Stale: a nonce the stream never answered with, naming svc-001 alone.
	r.send([]string{svc(1)}, first.GetVersionInfo(), "stale-"+first.GetNonce(), "")
	// Current: both, with the last answer's nonce.
	both := sortedNames(svc(0), svc(1))
	r.send(both, first.GetVersionInfo(), first.GetNonce(), "")
	next, got := r.recv()
	if names := namesOf(got); !slices.Equal(names, both) {
		t.Fatalf("the answer after a stale request and a current one names %v, want %v: the stale request was answered", names, both)
	}
	if next.GetNonce() == first.GetNonce() {
		t.Fatalf("second answer reuses nonce %q", next.GetNonce())
	}
}
