package agent

import (
	"context"
	"errors"
	"io"
	"slices"
	"strconv"
	"strings"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshca/meshca/internal/peercred"
)

// The three SDS methods. A stream's handler owns its state: it reads its
// requests through receive and wakes at each published state, so that a
// slow proxy holds up only its own stream.
//
// State of the world: the first request and every request naming other
// secrets is answered at once with the named secrets (all of them for a
// wildcard: no name, or "*"), the agent's state version and a nonce; an
// ACK or a NACK of the last answer sends nothing (a NACK is logged), and a
// request carrying an older nonce is ignored, as the xDS protocol asks. A
// published state is sent to a stream only when a secret it names changed.
//
// Delta: per-stream subscriptions (a first request without names, or "*",
// is a wildcard), initial_resource_versions honoured, only the secrets
// whose version differs from what the proxy holds are sent, and a secret
// the proxy holds that is gone, or that the caller may no longer have, is
// in removed_resources. ACKs and NACKs (by nonce) send nothing.
//
// Fetch: the named secrets, or go-control-plane's "skip fetch" error when
// version_info is the current version.

// errUpToDate is the fetch answer when the caller holds the current
// version: the error go-control-plane's server gives, so that clients
// written against it read it the same.
var errUpToDate = status.Error(codes.Unknown, "skip fetch: version up to date")

// checkType refuses a request for another type than Secret (an empty type
// is the stream's default, Secret).
func checkType(typeURL string) error {
	if typeURL != "" && typeURL != secretType {
		return status.Errorf(codes.InvalidArgument, "this socket serves only secrets (%s); the request asks for %.200q", secretType, typeURL)
	}
	return nil
}

// checkCount refuses a request naming more than maxNames secrets.
func checkCount(n int) error {
	if n > maxNames {
		return status.Errorf(codes.ResourceExhausted, "the request names %d secrets; at most %d may be named at once: split them over several streams", n, maxNames)
	}
	return nil
}

func isWildcard(names []string) bool { return len(names) == 0 || slices.Contains(names, "*") }

// FetchSecrets answers the named secrets the caller may have.
func (s *sdsServer) FetchSecrets(ctx context.Context, req *discoveryv3.DiscoveryRequest) (*discoveryv3.DiscoveryResponse, error) {
	names := req.GetResourceNames()
	if err := checkCount(len(names)); err != nil {
		return nil, err
	}
	if err := checkType(req.GetTypeUrl()); err != nil {
		return nil, err
	}
	wildcard := isWildcard(names)
	c, err := s.gate.gate.Caller(ctx)
	if err != nil {
		return nil, err
	}
	if err := s.gate.checkCaller(c, names, wildcard); err != nil {
		return nil, err
	}
	cur := s.current()
	if cur.version == "" {
		return nil, status.Error(codes.Unavailable, "the agent has published no secrets yet; retry")
	}
	if req.GetVersionInfo() == cur.version {
		return nil, errUpToDate
	}
	resources, _ := sotwAnswer(cur, names, wildcard, s.gate.mayHave(c))
	return &discoveryv3.DiscoveryResponse{VersionInfo: cur.version, Resources: resources, TypeUrl: secretType}, nil
}

// sotwAnswer returns the secrets of cur a state-of-the-world answer for
// names carries (every secret for a wildcard), those may allows, and the
// version of each.
func sotwAnswer(cur *published, names []string, wildcard bool, may func(string) bool) ([]*anypb.Any, map[string]string) {
	if wildcard {
		names = cur.names
	}
	resources := make([]*anypb.Any, 0, len(names))
	versions := make(map[string]string, len(names))
	for _, name := range names {
		if sec := cur.secrets[name]; sec != nil && may(name) {
			resources = append(resources, sec.any)
			versions[name] = sec.version
		}
	}
	return resources, versions
}

// sotwStream is the state of one state-of-the-world stream.
type sotwStream struct {
	s        *sdsServer
	stream   secretv3.SecretDiscoveryService_StreamSecretsServer
	caller   peercred.Caller
	started  bool     // a request arrived
	names    []string // named, sorted and without repeats
	wildcard bool
	nonce    uint64            // of the last answer
	sent     map[string]string // name -> version of each secret of the last answer
}

// StreamSecrets serves one state-of-the-world stream.
func (s *sdsServer) StreamSecrets(stream secretv3.SecretDiscoveryService_StreamSecretsServer) error {
	ctx := stream.Context()
	c, err := s.gate.gate.Caller(ctx)
	if err != nil {
		return err
	}
	w := &sotwStream{s: s, stream: stream, caller: c}
	return serveStream(ctx, s, stream.Recv, w.request, w.push)
}

// serveStream runs one stream until it ends: each request received is
// handled (request) against the state current then, and each newer state
// is offered to it (push).
func serveStream[R any](ctx context.Context, s *sdsServer, recv func() (R, error),
	request func(context.Context, R, *published) error, push func(*published, bool) error) error {
	reqs := make(chan R)
	recvErr := receive(ctx, recv, reqs)
	cur := s.current()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-recvErr:
			return endOfStream(err)
		case req := <-reqs:
			cur = s.current()
			if err := request(ctx, req, cur); err != nil {
				return err
			}
		case <-cur.next:
			cur = s.current()
			if err := push(cur, false); err != nil {
				return err
			}
		}
	}
}

// endOfStream is the status a stream ends with when its requests end.
func endOfStream(err error) error {
	if errors.Is(err, io.EOF) || status.Code(err) == codes.Canceled {
		return nil
	}
	return err
}

// request handles one request: checked, then answered at once when it
// names other secrets than the stream's last one.
func (w *sotwStream) request(ctx context.Context, req *discoveryv3.DiscoveryRequest, cur *published) error {
	names := req.GetResourceNames()
	if err := checkCount(len(names)); err != nil {
		return err
	}
	if err := checkType(req.GetTypeUrl()); err != nil {
		return err
	}
	wildcard := isWildcard(names)
	if err := w.s.gate.check(ctx, names, wildcard); err != nil {
		return err
	}
	if w.nonce != 0 && req.GetResponseNonce() != strconv.FormatUint(w.nonce, 10) {
		return nil // an older answer's ACK or NACK, or no answer's
	}
	if d := req.GetErrorDetail(); d != nil {
		w.s.logNACK(w.caller, "sotw", req.GetVersionInfo(), req.GetResponseNonce(), len(w.sent), d.GetMessage())
	}
	if wildcard {
		names = nil
	} else {
		names = slices.Clone(names)
		slices.Sort(names)
		names = slices.Compact(names)
	}
	if w.started && wildcard == w.wildcard && slices.Equal(names, w.names) {
		return nil // an ACK, a NACK, or the same request again
	}
	w.started, w.wildcard, w.names = true, wildcard, names
	return w.push(cur, true)
}

// push sends the stream's secrets of cur when one of them changed since
// its last answer, or, with asked, when it made a new request. A secret
// the caller may no longer have ends the stream, as its next request
// would be refused.
func (w *sotwStream) push(cur *published, asked bool) error {
	if !w.started || cur.version == "" {
		return nil
	}
	if !asked {
		if err := w.s.gate.checkCaller(w.caller, w.names, w.wildcard); err != nil {
			return err
		}
	}
	resources, versions := sotwAnswer(cur, w.names, w.wildcard, w.s.gate.mayHave(w.caller))
	if len(versions) == 0 {
		// Nothing to say: Envoy rejects an empty answer, and keeps what it
		// has of a secret that went (an expired certificate no longer
		// served) until it is served again.
		return nil
	}
	if !asked && sameVersions(versions, w.sent) {
		return nil
	}
	w.nonce++
	if err := w.stream.Send(&discoveryv3.DiscoveryResponse{VersionInfo: cur.version, Resources: resources, TypeUrl: secretType,
		Nonce: strconv.FormatUint(w.nonce, 10)}); err != nil {
		return err
	}
	w.sent = versions
	return nil
}

func sameVersions(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for name, v := range a {
		if w, ok := b[name]; !ok || w != v {
			return false
		}
	}
	return true
}

// deltaStream is the state of one delta stream.
type deltaStream struct {
	s          *sdsServer
	stream     secretv3.SecretDiscoveryService_DeltaSecretsServer
	caller     peercred.Caller
	started    bool
	wildcard   bool
	subscribed map[string]bool
	held       map[string]string // name -> version the proxy holds
	nonce      uint64
}

// DeltaSecrets serves one delta stream.
func (s *sdsServer) DeltaSecrets(stream secretv3.SecretDiscoveryService_DeltaSecretsServer) error {
	ctx := stream.Context()
	c, err := s.gate.gate.Caller(ctx)
	if err != nil {
		return err
	}
	w := &deltaStream{s: s, stream: stream, caller: c, subscribed: map[string]bool{}, held: map[string]string{}}
	return serveStream(ctx, s, stream.Recv, w.request, w.push)
}

// request applies one request's subscriptions, checked first, and sends
// what they change.
func (w *deltaStream) request(ctx context.Context, req *discoveryv3.DeltaDiscoveryRequest, cur *published) error {
	sub, unsub, initial := req.GetResourceNamesSubscribe(), req.GetResourceNamesUnsubscribe(), req.GetInitialResourceVersions()
	if err := checkCount(len(sub) + len(unsub) + len(initial)); err != nil {
		return err
	}
	if err := checkType(req.GetTypeUrl()); err != nil {
		return err
	}
	first := !w.started
	wildcard := (first && len(sub) == 0) || slices.Contains(sub, "*")
	if err := w.s.gate.check(ctx, sub, wildcard); err != nil {
		return err
	}
	if d := req.GetErrorDetail(); d != nil {
		w.s.logNACK(w.caller, "delta", "", req.GetResponseNonce(), len(w.held), d.GetMessage())
	}
	w.started = true
	if wildcard {
		w.wildcard = true
	}
	if first {
		for name, v := range initial {
			w.held[name] = v
		}
	}
	for _, name := range unsub {
		if name == "*" {
			w.wildcard = false
			continue
		}
		// The proxy forgets what it unsubscribes from: nothing to remove.
		delete(w.subscribed, name)
		delete(w.held, name)
	}
	for _, name := range sub {
		if name != "*" {
			w.subscribed[name] = true
		}
	}
	if err := checkCount(len(w.subscribed)); err != nil {
		return err
	}
	return w.push(cur, first)
}

// push sends the secrets of cur whose version differs from what the proxy
// holds, and removes what it holds but may no longer have: gone from the
// node, or no longer matching the caller. The first request of a wildcard
// stream is answered even when empty, as Envoy waits for it.
func (w *deltaStream) push(cur *published, first bool) error {
	if !w.started || cur.version == "" {
		return nil
	}
	assigned, _ := w.s.gate.a.assignments()
	may := func(name string) *secret {
		sec := cur.secrets[name]
		if sec == nil || (w.wildcard || w.subscribed[name]) && w.s.gate.refusal(w.caller, assigned, name) == "" {
			return sec
		}
		return nil
	}
	var resources []*discoveryv3.Resource
	add := func(name string) {
		if sec := may(name); sec != nil && w.held[name] != sec.version {
			resources = append(resources, sec.delta)
		}
	}
	if w.wildcard {
		for _, name := range cur.names {
			add(name)
		}
	} else {
		for name := range w.subscribed {
			add(name)
		}
	}
	var removed []string
	for name := range w.held {
		if may(name) == nil {
			removed = append(removed, name)
		}
	}
	if len(resources) == 0 && len(removed) == 0 && !(first && w.wildcard) {
		return nil
	}
	slices.SortFunc(resources, func(x, y *discoveryv3.Resource) int { return strings.Compare(x.GetName(), y.GetName()) })
	slices.Sort(removed)
	w.nonce++
	if err := w.stream.Send(&discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: cur.version, Resources: resources, RemovedResources: removed,
		TypeUrl: secretType, Nonce: strconv.FormatUint(w.nonce, 10)}); err != nil {
		return err
	}
	for _, r := range resources {
		w.held[r.GetName()] = r.GetVersion()
	}
	for _, name := range removed {
		delete(w.held, name)
	}
	return nil
}
