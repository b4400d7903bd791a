package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	mrand "math/rand/v2"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/nodeapi"
	"github.com/meshca/meshca/rotation"
)

// followIdentities keeps one worker per identity meshca says the node
// holds: started for a new one, stopped (and its certificate dropped) for
// one the node lost. When meshca issues from another CA than the one that
// signed an identity's certificate (a CA rotation switched issuance), the
// worker re-keys at once: the rotation waits for it before the previous CA
// retires. meshca pushes each change of the answer on the identity watch
// (watchIdentities); the poll is the fallback, every WatchedPoll while
// the watch is open and every IdentityPoll while it is not.
func (a *Agent) followIdentities(ctx context.Context) error {
	type worker struct {
		stop  context.CancelFunc
		done  chan struct{}
		rekey chan struct{} // capacity 1: re-key now
	}
	workers := map[string]worker{}
	defer func() {
		for _, w := range workers {
			w.stop()
			<-w.done
		}
	}()
	var (
		attempt int
		pushed  *nodeapi.IdentitiesResponse
	)
	for {
		wait := a.cfg.IdentityPoll
		if a.watching.Load() {
			wait = a.cfg.WatchedPoll
		}
		var (
			resp nodeapi.IdentitiesResponse
			err  error
		)
		if pushed != nil {
			resp, pushed = *pushed, nil
		} else {
			resp, err = a.identities(ctx)
		}
		assigned := resp.Identities
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			attempt++
			wait = min(wait, a.retryWait(attempt))
			a.log.Warn("cannot list the node's identities at meshca; serving the current certificates", "attempt", attempt, logErr, err)
		default:
			attempt = 0
			a.setIssuer(resp.IssuerSerial)
			names := make([]string, 0, len(assigned))
			selectors := make(map[string][]string, len(assigned))
			for _, ai := range assigned {
				names = append(names, ai.Name)
				selectors[ai.Name] = ai.Selectors
			}
			a.setSelectors(selectors)
			for name, w := range workers {
				if !slices.Contains(names, name) {
					// The worker is gone before its certificate is
					// dropped, so that it cannot put one back.
					w.stop()
					<-w.done
					delete(workers, name)
					a.dropSVID(name)
					a.log.Info("identity no longer held by this node: its certificate is no longer served", logIdentity, name)
				}
			}
			for _, name := range names {
				if _, ok := workers[name]; ok {
					continue
				}
				wctx, stop := context.WithCancel(ctx)
				w := worker{stop: stop, done: make(chan struct{}), rekey: make(chan struct{}, 1)}
				workers[name] = w
				go func() {
					defer close(w.done)
					a.keepSVID(wctx, name, w.rekey)
				}()
			}
			for _, name := range a.issuedElsewhere(resp.IssuerSerial) {
				if w, ok := workers[name]; ok {
					select {
					case w.rekey <- struct{}{}:
					default:
					}
				}
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-a.identitiesWake:
		case r := <-a.pushed:
			pushed = &r
		case <-a.cfg.Clock.After(wait):
		}
	}
}

// watchIdentities keeps the identity watch open (nodeapi
// WatchIdentities): meshca sends the node's identities at once and again
// at each change, which followIdentities applies. It reopens a broken
// stream with backoff, polling meanwhile, and gives up (leaving the poll)
// on a meshca that does not serve it.
func (a *Agent) watchIdentities(ctx context.Context) error {
	attempt := 0
	for {
		got, err := a.identityStream(ctx)
		a.watching.Store(false)
		if ctx.Err() != nil {
			return nil
		}
		if status.Code(err) == codes.Unimplemented {
			a.log.Info("meshca does not push identity changes; polling for them", "every", a.cfg.IdentityPoll.String())
			return nil
		}
		if got {
			attempt = 0
			// Whatever changed while no stream was open is asked now.
			a.wakeIdentities()
		}
		attempt++
		wait := a.retryWait(attempt)
		a.log.Warn("identity watch to meshca broke; polling until it is back", "attempt", attempt, "retry_in", wait.String(), logErr, err)
		select {
		case <-ctx.Done():
			return nil
		case <-a.cfg.Clock.After(wait):
		}
	}
}

// identityStream follows one identity watch until it breaks, handing
// each answer that checks out to followIdentities. got reports whether it
// delivered anything.
func (a *Agent) identityStream(ctx context.Context) (got bool, err error) {
	ctx, cancel := context.WithCancel(withIssuer(ctx))
	defer cancel()
	desc := &grpc.StreamDesc{StreamName: nodeapi.WatchIdentitiesMethod, ServerStreams: true}
	stream, err := a.cfg.Conn.NewStream(ctx, desc, nodeapi.FullWatchIdentitiesMethod, grpc.ForceCodec(nodeapi.Codec{}))
	if err != nil {
		return false, fmt.Errorf("open identity watch: %w", err)
	}
	if err := stream.SendMsg(&nodeapi.IdentitiesRequest{}); err != nil {
		return false, fmt.Errorf("identity watch request: %w", err)
	}
	if err := stream.CloseSend(); err != nil {
		return false, fmt.Errorf("identity watch request: %w", err)
	}
	for {
		var resp nodeapi.IdentitiesResponse
		if err := stream.RecvMsg(&resp); err != nil {
			return got, fmt.Errorf("identity watch: %w", err)
		}
		if err := a.checkIdentities(resp); err != nil {
			// Like a refused poll answer: nothing of it is used.
			a.log.Error("identities pushed by meshca refused; the current ones are kept", logErr, err)
			continue
		}
		got = true
		a.watching.Store(true)
		// Only this goroutine sends: after the drain there is room.
		select {
		case <-a.pushed:
		default:
		}
		a.pushed <- resp
	}
}

// retryWait is the wait before retry number attempt of a call that has no
// certificate's expiry to keep within.
func (a *Agent) retryWait(attempt int) time.Duration {
	now := a.cfg.Clock.Now()
	return a.cfg.Backoff.Next(attempt, now, now.Add(10*a.cfg.Backoff.Max))
}

// setIssuer records the CA meshca said it issues from (empty: it did not
// say).
func (a *Agent) setIssuer(serial string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.issuer = serial
}

// signedBefore reports whether v was signed by another CA than the one
// meshca last said it issues from: a re-key that raced the switch of
// issuing CA (the signer may take the new CA a moment after meshca names
// it).
func (a *Agent) signedBefore(v SVID) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.issuer != "" && v.IssuerSerial != "" && v.IssuerSerial != a.issuer
}

// issuedElsewhere names the identities whose certificate another CA than
// issuer signed; none when either is unknown.
func (a *Agent) issuedElsewhere(issuer string) []string {
	if issuer == "" {
		return nil
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for name, v := range a.svids {
		if v.IssuerSerial != "" && v.IssuerSerial != issuer {
			out = append(out, name)
		}
	}
	return out
}

// identities asks meshca for the node's identities and the CA it issues
// from, and checks the answer (checkIdentities).
func (a *Agent) identities(ctx context.Context) (nodeapi.IdentitiesResponse, error) {
	ctx, cancel := context.WithTimeout(withIssuer(ctx), callTimeout)
	defer cancel()
	var resp nodeapi.IdentitiesResponse
	if err := a.cfg.Conn.Invoke(ctx, nodeapi.FullIdentitiesMethod, &nodeapi.IdentitiesRequest{}, &resp, grpc.ForceCodec(nodeapi.Codec{})); err != nil {
		return nodeapi.IdentitiesResponse{}, fmt.Errorf("identities: %w", err)
	}
	if err := a.checkIdentities(resp); err != nil {
		return nodeapi.IdentitiesResponse{}, err
	}
	return resp, nil
}

// checkIdentities checks each identity of an answer: a valid identity name
// (it becomes a path under FilesDir) whose SPIFFE ID is the one meshca
// names.
func (a *Agent) checkIdentities(resp nodeapi.IdentitiesResponse) error {
	for _, ai := range resp.Identities {
		id, err := identity.ID(a.cfg.TrustDomain, ai.Name)
		if err != nil {
			return fmt.Errorf("%w: identity %q: %v", ErrBadAnswer, ai.Name, err)
		}
		if id.String() != ai.SPIFFEID {
			return fmt.Errorf("%w: identity %q: SPIFFE ID %q, want %q", ErrBadAnswer, ai.Name, ai.SPIFFEID, id)
		}
	}
	return nil
}

// withIssuer asks meshca to name the issuing CA in its answers.
func withIssuer(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, nodeapi.IssuerHeader, "1")
}

// keepSVID holds a certificate of identity until ctx ends: it gets one,
// renews it at its renewal point or when told on rekey, retries with
// backoff when meshca cannot sign, and drops it when it expires.
func (a *Agent) keepSVID(ctx context.Context, name string, rekey <-chan struct{}) {
	var (
		cur     SVID
		have    bool
		attempt int
		force   bool // re-key before the renewal point
		stale   int  // re-keys in a row that came back from a previous CA
	)
	for {
		now := a.cfg.Clock.Now()
		var wait time.Duration
		if have && !force && now.Before(a.cfg.Policy.RenewAt(cur.NotBefore, cur.NotAfter, cur.Serial)) {
			wait = a.cfg.Policy.RenewAt(cur.NotBefore, cur.NotAfter, cur.Serial).Sub(now)
		} else {
			a.renewing.Add(1)
			v, err := a.sign(ctx, name)
			// Before the state changes: a follower woken by this
			// certificate sees no renewal pending for it (settle).
			a.renewing.Add(-1)
			if ctx.Err() != nil {
				return
			}
			now = a.cfg.Clock.Now()
			if err == nil {
				prev := cur.Serial
				cur, have, attempt, force = v, true, 0, false
				a.setSVID(v)
				a.log.Info("certificate signed for a key made here", logIdentity, name, logSerial, v.Serial, logNotAfter, v.NotAfter, "replaces", prev)
				// Never sign again at once, even for a certificate whose
				// renewal point has passed (a clock far ahead of meshca's).
				wait = max(a.cfg.Policy.RenewAt(cur.NotBefore, cur.NotAfter, cur.Serial).Sub(now), a.cfg.Backoff.Min)
				if a.signedBefore(v) {
					// Nothing would tell the agent again: re-key until the
					// signer issues from the CA meshca named, with backoff.
					stale++
					force, wait = true, a.retryWait(stale)
					a.log.Info("certificate still signed by the previous CA; re-keying again", logIdentity, name, logSerial, v.Serial, "issuer", v.IssuerSerial, "retry_in", wait.String())
				} else {
					stale = 0
				}
			} else {
				attempt++
				wait = a.retryWait(attempt)
				if have {
					wait = a.cfg.Backoff.Next(attempt, now, cur.NotAfter)
				}
				wait = jitter(wait)
				a.logFailure(name, cur, have, now, attempt, err)
			}
		}
		if have {
			if !now.Before(cur.NotAfter) {
				a.dropSVID(name)
				have = false
				a.log.Error("certificate expired and is no longer served: meshca could not renew it", logIdentity, name, logSerial, cur.Serial, logNotAfter, cur.NotAfter)
			} else {
				wait = min(wait, cur.NotAfter.Sub(now))
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-rekey:
			if have && !force {
				force = true
				a.log.Info("meshca issues from another CA now: re-keying", logIdentity, name, logSerial, cur.Serial, "issuer", cur.IssuerSerial)
			}
		case <-a.cfg.Clock.After(wait):
		}
	}
}

// logFailure says how bad a failed renewal is: a warning once less than a
// quarter of the certificate's life is left, an error below a tenth.
func (a *Agent) logFailure(name string, cur SVID, have bool, now time.Time, attempt int, err error) {
	if !have {
		a.log.Warn("no certificate yet: meshca did not sign the CSR", logIdentity, name, "attempt", attempt, logErr, err)
		return
	}
	life, left := cur.NotAfter.Sub(cur.NotBefore), cur.NotAfter.Sub(now)
	if left <= 0 {
		return // keepSVID drops it and says so
	}
	level, msg := slog.LevelInfo, "renewal failed; the current certificate is still served"
	switch {
	case left < life/10:
		level, msg = slog.LevelError, "renewal keeps failing and the certificate expires very soon; check that meshca is reachable"
	case rotation.Alarming(now, cur.NotBefore, cur.NotAfter):
		level, msg = slog.LevelWarn, "renewal keeps failing and the certificate expires soon; check that meshca is reachable"
	}
	a.log.Log(context.Background(), level, msg, logIdentity, name, logSerial, cur.Serial, logNotAfter, cur.NotAfter,
		"left", left.Round(time.Second).String(), "attempt", attempt, logErr, err)
}

// jitter is a random wait between half of d and d: CSRs refused together
// (a busy meshca after a CA switch) are retried apart.
func jitter(d time.Duration) time.Duration {
	if d <= 1 {
		return d
	}
	return d/2 + mrand.N(d-d/2+1)
}

// sign makes a new key, has meshca sign its CSR, and checks the answer.
// At most Config.MaxSigning CSRs are at meshca at once, none while meshca
// said it is too busy (noteBusy); the call's timeout runs from the moment
// this one is sent.
func (a *Agent) sign(ctx context.Context, name string) (SVID, error) {
	id, err := identity.ID(a.cfg.TrustDomain, name)
	if err != nil {
		return SVID{}, err
	}
	select {
	case a.signing <- struct{}{}:
	case <-ctx.Done():
		return SVID{}, ctx.Err()
	}
	defer func() { <-a.signing }()
	if err := a.waitNotBusy(ctx); err != nil {
		return SVID{}, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), a.cfg.Rand)
	if err != nil {
		return SVID{}, fmt.Errorf("make key: %w", err)
	}
	csr, err := x509.CreateCertificateRequest(a.cfg.Rand, &x509.CertificateRequest{}, key)
	if err != nil {
		return SVID{}, fmt.Errorf("make CSR: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	cctx = withIssuer(cctx)
	var resp nodeapi.SignResponse
	if err := a.cfg.Conn.Invoke(cctx, nodeapi.FullSignMethod, &nodeapi.SignRequest{Identity: name, CSR: csr}, &resp, grpc.ForceCodec(nodeapi.Codec{})); err != nil {
		if status.Code(err) == codes.ResourceExhausted {
			a.noteBusy()
		}
		return SVID{}, fmt.Errorf("sign CSR: %w", err)
	}
	a.noteSigned()
	return a.checkSigned(resp, name, id.String(), key)
}

// noteBusy holds back every CSR of this agent for a while after meshca
// refused one as beyond its signing queue: the next identity would
// otherwise send its CSR at once, to be refused too, and a CA switch
// re-keying a hundred identities would have meshca refuse them one after
// the other. The hold grows with each refusal after one (Config.Backoff,
// jittered) until a CSR is signed; a refusal of a CSR sent before the
// hold began does not extend it.
func (a *Agent) noteBusy() {
	a.busyMu.Lock()
	defer a.busyMu.Unlock()
	now := a.cfg.Clock.Now()
	if now.Before(a.busyUntil) {
		return
	}
	a.busyStreak++
	a.busyUntil = now.Add(jitter(a.retryWait(a.busyStreak)))
}

// noteSigned ends the growth of the hold: meshca signs again.
func (a *Agent) noteSigned() {
	a.busyMu.Lock()
	defer a.busyMu.Unlock()
	a.busyStreak = 0
}

// waitNotBusy waits until the hold of noteBusy is over.
func (a *Agent) waitNotBusy(ctx context.Context) error {
	for {
		a.busyMu.Lock()
		left := a.busyUntil.Sub(a.cfg.Clock.Now())
		a.busyMu.Unlock()
		if left <= 0 {
			return nil
		}
		select {
		case <-a.cfg.Clock.After(left):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// checkSigned accepts meshca's answer only for this key and identity, with
// a chain that verifies against the bundle.
func (a *Agent) checkSigned(resp nodeapi.SignResponse, name, spiffeID string, key crypto.Signer) (SVID, error) {
	bad := func(format string, args ...any) (SVID, error) {
		return SVID{}, fmt.Errorf("%w: identity %q: %s", ErrBadAnswer, name, fmt.Sprintf(format, args...))
	}
	chain, err := parseCerts([]byte(resp.ChainPEM))
	if err != nil || len(chain) == 0 {
		return bad("certificate chain: %v", err)
	}
	leaf := chain[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != spiffeID {
		return bad("certificate is not for %s", spiffeID)
	}
	if k, ok := leaf.PublicKey.(interface{ Equal(crypto.PublicKey) bool }); !ok || !k.Equal(key.Public()) {
		return bad("certificate is not for the key made here")
	}
	roots, err := a.rootsOf(resp.BundlePEM)
	if err != nil {
		return bad("trust bundle: %v", err)
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: a.cfg.Clock.Now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return bad("certificate does not verify against the bundle: %v", err)
	}
	id, _ := identity.ID(a.cfg.TrustDomain, name)
	return SVID{Identity: name, ID: id, Chain: chain, ChainPEM: encodeCerts(chain), Key: key,
		Serial: fmt.Sprintf("%x", leaf.SerialNumber), NotBefore: leaf.NotBefore, NotAfter: leaf.NotAfter, IssuerSerial: resp.IssuerSerial}, nil
}

// rootsOf returns the pool of the bundle meshca sent with a certificate:
// the one of the previous answer when the bundle is the same, as it is for
// every CSR of a burst.
func (a *Agent) rootsOf(bundlePEM string) (*x509.CertPool, error) {
	a.rootsMu.Lock()
	defer a.rootsMu.Unlock()
	if a.roots != nil && a.rootsPEM == bundlePEM {
		return a.roots, nil
	}
	bundle, err := parseCerts([]byte(bundlePEM))
	if err != nil {
		return nil, err
	}
	if len(bundle) == 0 {
		return nil, errors.New("no certificate")
	}
	roots := x509.NewCertPool()
	for _, c := range bundle {
		roots.AddCert(c)
	}
	a.roots, a.rootsPEM = roots, bundlePEM
	return roots, nil
}

func parseCerts(data []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for block, rest := pem.Decode(data); block != nil; block, rest = pem.Decode(rest) {
		if block.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}

func encodeCerts(certs []*x509.Certificate) []byte {
	var out []byte
	for _, c := range certs {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return out
}

// keyPEM encodes key as PKCS#8 PEM, for the local proxy only.
func keyPEM(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("encode key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}
