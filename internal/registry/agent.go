package registry

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/store"
)

// Agent nodes make the keys of their identities themselves and send CSRs
// over their authenticated connection: meshca signs the public key of each
// and never generates, stores or sends a private key for them. Every agent
// node holding an identity has its own certificate for it, recorded as a
// store.HolderCert, so that revoking one node leaves the other holders'
// certificates valid.

// ActionAgentSign records a certificate signed for an agent node's CSR, or a
// refused CSR.
const ActionAgentSign = "cert.sign"

// Agent CSR limits. An agent signs a CSR per identity when it starts and at
// each identity's half-life after that; a burst beyond
// SignBurst + SignPerIdentity × (identities held) CSRs per SignWindow is a
// loop or a stolen node key. Counted in the node's record, so the limit
// holds across restarts and replicas (store.SignCount).
const (
	SignWindow      = 10 * time.Minute
	SignBurst       = 10
	SignPerIdentity = 4
	// MaxCSRSize bounds an agent's CSR: a P-256 CSR is about 300 bytes
	// and an RSA-4096 one under 2 KiB.
	MaxCSRSize = 8 << 10
)

// Signed is an agent node's certificate for one identity.
type Signed struct {
	Identity  string
	Node      string
	ChainPEM  []byte // certificate and intermediates; never a key
	BundlePEM []byte
	Serial    string
	NotAfter  time.Time
	// IssuerSerial names the CA that signed it: an agent re-keys when
	// meshca issues from another CA (see CurrentIssuer).
	IssuerSerial string
}

// HolderCert is one agent node's current certificate for an identity.
type HolderCert struct {
	Node  string
	Cert  Cert
	State string // valid, expired, not-yet-valid or revoked at the registry's clock
}

// SignCSR signs a certificate of identity ident for the public key of
// csrDER, for agent node node whose connection was authenticated with
// presented. The node must be an active agent node holding ident, presented
// its current node certificate, and the node within its CSR limit; only the
// CSR's key is used (the CA checks its signature), everything else comes
// from the identity. The certificate becomes the node's current one for ident;
// it is recorded and audited in one transaction. A refusal is audited
// (rate-limited refusals in aggregate).
func (r *Registry) SignCSR(ctx context.Context, node string, presented *x509.Certificate, ident string, csrDER []byte) (Signed, error) {
	s, err := r.signCSR(ctx, node, presented, ident, csrDER)
	if err != nil && ctx.Err() == nil && !errors.Is(err, ca.ErrLint) {
		ev := store.Event{Action: ActionAgentSign, Actor: "node:" + clip(node, 100), Node: clip(node, identity.MaxNameLength),
			Identity: clip(ident, identity.MaxNameLength), Detail: err.Error()}
		if errors.Is(err, ErrRateLimited) {
			r.limitedDeny(ctx, ev)
		} else {
			r.deny(ctx, ev)
		}
	}
	return s, err
}

func (r *Registry) signCSR(ctx context.Context, node string, presented *x509.Certificate, ident string, csrDER []byte) (Signed, error) {
	if presented == nil {
		return Signed{}, fmt.Errorf("node %q: a CSR must be sent with the node's certificate: %w", node, ErrDenied)
	}
	if len(csrDER) == 0 {
		// Without a CSR the CA would make a key: never for an agent node.
		return Signed{}, fmt.Errorf("%w: no CSR; send a DER PKCS#10 request for the key the node made", ca.ErrInvalidRequest)
	}
	if len(csrDER) > MaxCSRSize {
		return Signed{}, fmt.Errorf("%w: CSR of %d bytes; the limit is %d (send a CSR with the public key and nothing else)", ca.ErrInvalidRequest, len(csrDER), MaxCSRSize)
	}
	// The CA parses the CSR and checks its signature (ca.ErrInvalidRequest)
	// before it signs anything.
	id, err := identity.ID(r.cfg.TrustDomain, ident)
	if err != nil {
		return Signed{}, err
	}
	// Refuse before signing anything; the transaction below decides.
	// The presented certificate is compared byte for byte with its record
	// once; later CSRs on it need only its serial checked.
	full := !r.comparedNodeCerts.has(node, presented)
	var rec store.Identity
	err = r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		n, err := tx.Node(node)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %q is not registered: %w", node, ErrDenied)
		} else if err != nil {
			return fmt.Errorf("node %q: %w", node, err)
		}
		if rec, err = agentMayHold(tx, n, ident, presented, full); err != nil {
			return err
		}
		if full {
			r.comparedNodeCerts.add(node, presented)
		}
		count, err := tx.SignCount(node)
		if err != nil {
			return err
		}
		return signAllowed(&count, len(n.Identities), r.cfg.Clock.Now().UTC())
	})
	if err != nil {
		return Signed{}, err
	}
	// A caller that has gone (its agent timed out and will send another
	// CSR) gets nothing signed nor stored: in a storm of CSRs that work
	// would only delay the CSRs still awaited.
	if err := ctx.Err(); err != nil {
		return Signed{}, fmt.Errorf("CSR of node %q abandoned by its caller: %w", node, err)
	}
	issued, issuerSerial, err := r.issue(ctx, ca.Request{ID: id, DNSNames: rec.DNSNames, TTL: rec.TTL, CSR: csrDER})
	if err != nil {
		if errors.Is(err, ca.ErrLint) {
			r.deny(ctx, store.Event{Action: ActionAgentSign, Actor: "node:" + node, Identity: ident, Node: node, Outcome: store.OutcomeFailed, Detail: err.Error()})
		}
		return Signed{}, err
	}
	if issued.KeyPKCS8 != nil {
		return Signed{}, fmt.Errorf("registry: signing a CSR of node %q made a key", node)
	}
	cert := certRecord(ident, issued, issuerSerial, r.cfg.Clock.Now().UTC())
	cert.Node = node
	var (
		replaces string
		count    store.SignCount
	)
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		// Checked again once the transaction holds the store: the wait
		// for it may have outlasted the caller.
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("CSR of node %q abandoned by its caller: %w", node, err)
		}
		n, err := tx.Node(node)
		if err != nil {
			return fmt.Errorf("node %q: %w", node, err)
		}
		// The node may have been revoked, lost the identity or renewed its
		// node certificate while the CSR was being signed. The presented
		// certificate was compared with its record above; records do not
		// change, so here its serial is enough.
		if _, err := agentMayHold(tx, n, ident, presented, false); err != nil {
			return err
		}
		now := r.cfg.Clock.Now().UTC()
		if count, err = tx.SignCount(node); err != nil {
			return err
		}
		if err := signAllowed(&count, len(n.Identities), now); err != nil {
			return err
		}
		if err := tx.PutSignCount(count); err != nil {
			return err
		}
		replaces = ""
		if prev, err := tx.HolderCert(ident, node); err == nil {
			replaces = prev.Serial
		}
		if err := tx.PutCert(cert.Cert, nil); err != nil {
			return err
		}
		if err := tx.PutHolderCert(cert.Cert, now); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionAgentSign, Actor: "node:" + node, Identity: ident, Node: node, Serial: cert.Serial,
			Detail: fmt.Sprintf("from the node's CSR; replaces=%s not_after=%s csrs_in_window=%d", replaces, cert.NotAfter.Format(time.RFC3339), count.Signs)})
		return err
	})
	if err != nil {
		return Signed{}, err
	}
	r.log.Info("certificate signed for an agent node", "identity", ident, "node", node, "serial", cert.Serial, "not_after", cert.NotAfter)
	return Signed{Identity: ident, Node: node, ChainPEM: chainPEM(cert.DER, cert.Chain), BundlePEM: r.cfg.Issuer.BundlePEM(),
		Serial: cert.Serial, NotAfter: cert.NotAfter, IssuerSerial: issuerSerial}, nil
}

// CurrentIssuer is the serial of the CA meshca issues from now, as the
// store's CA set names it: once a CA rotation switches issuance, an agent
// re-keys every identity whose certificate another CA signed, and the
// rotation waits for that (authority counts agent certificates still from
// the previous CA).
func (r *Registry) CurrentIssuer(ctx context.Context) (string, error) {
	var serial string
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		serial = set.IssuerSerial
		return err
	})
	return serial, err
}

// agentMayHold checks that n is an active agent node holding identity
// ident, that presented is its current node certificate (compared byte for
// byte with its record when full, by serial otherwise) and not revoked, and
// that ident is active and may be held by a node. It returns the identity.
func agentMayHold(tx *store.Tx, n store.Node, ident string, presented *x509.Certificate, full bool) (store.Identity, error) {
	if n.State != store.StateActive {
		return store.Identity{}, fmt.Errorf("node %q was revoked: %w", n.Name, ErrDenied)
	}
	if !n.Agent {
		return store.Identity{}, fmt.Errorf("node %q is not an agent node: meshca makes the keys of its identities and sends them over SDS (register agent nodes with meshca node add --agent): %w", n.Name, ErrDenied)
	}
	if !slices.Contains(n.Identities, ident) {
		return store.Identity{}, fmt.Errorf("node %q does not hold identity %q (assign it first: meshca node assign): %w", n.Name, clip(ident, identity.MaxNameLength), ErrDenied)
	}
	if full {
		if err := stillCurrent(tx, n, presented); err != nil {
			return store.Identity{}, err
		}
	} else if err := stillCurrentSerial(tx, n, serialHex(presented)); err != nil {
		return store.Identity{}, err
	}
	id, err := tx.Identity(ident)
	if err != nil {
		return store.Identity{}, fmt.Errorf("identity %q: %v: %w", ident, err, ErrDenied)
	}
	if id.State != store.StateActive {
		return store.Identity{}, fmt.Errorf("identity %q is %s: %w", ident, id.State, ErrDenied)
	}
	if id.Admin {
		return store.Identity{}, fmt.Errorf("identity %q has admin access and is never held by a node: %w", ident, ErrDenied)
	}
	return id, nil
}

// comparedCerts remembers node certificates found byte for byte equal to
// their records, by serial: a certificate record is never rewritten (the
// store refuses a second one of a serial), so a certificate once found
// equal to its record stays so, and an agent's later CSRs with the same
// certificate need not read the record again. Whether the certificate is
// still the node's current one and not revoked is read every time. Safe
// for concurrent use; bounded at maxComparedCerts, then emptied.
type comparedCerts struct {
	mu sync.Mutex
	m  map[string]comparedCert // by serial
}

type comparedCert struct {
	node string
	sum  [sha256.Size]byte // of the certificate's DER
	// issuer is the CA that issued it, when an authentication compared it
	// (peers.go); empty when a CSR did.
	issuer string
}

// maxComparedCerts bounds comparedCerts: one node certificate (two while
// renewing) per agent node.
const maxComparedCerts = 1 << 14

func (c *comparedCerts) has(node string, cert *x509.Certificate) bool {
	if cert == nil {
		return false
	}
	sum := sha256.Sum256(cert.Raw)
	c.mu.Lock()
	defer c.mu.Unlock()
	got, ok := c.m[serialHex(cert)]
	return ok && got.node == node && got.sum == sum
}

// add records that cert was found equal to its record, node's.
func (c *comparedCerts) add(node string, cert *x509.Certificate) {
	sum := sha256.Sum256(cert.Raw)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxComparedCerts {
		c.m = make(map[string]comparedCert)
	}
	c.m[serialHex(cert)] = comparedCert{node: node, sum: sum}
}

// stillCurrentSerial is stillCurrent for a certificate already compared
// with its record: it is still n's current or renewed one, and not revoked.
func stillCurrentSerial(tx *store.Tx, n store.Node, serial string) error {
	if serial != n.CertSerial && serial != n.NextSerial {
		return fmt.Errorf("node %q: certificate %s was replaced; send CSRs with the node's current certificate: %w", n.Name, serial, ErrDenied)
	}
	if _, err := tx.Revocation(serial); err == nil {
		return fmt.Errorf("node %q: certificate %s is revoked: %w", n.Name, serial, ErrDenied)
	}
	return nil
}

// signAllowed counts a CSR at now of a node holding identities, or says
// when the next one is allowed.
func signAllowed(c *store.SignCount, identities int, now time.Time) error {
	if now.Sub(c.WindowStart) >= SignWindow || now.Before(c.WindowStart) {
		c.WindowStart, c.Signs = now, 0
	}
	if limit := SignBurst + SignPerIdentity*identities; c.Signs >= limit {
		return fmt.Errorf("%w: node %q had %d CSRs signed since %s (its limit is %d per %s); the next is allowed at %s (an agent signs one per identity at start and at half-life: look for a loop, or a copy of the node key in other hands)",
			ErrRateLimited, c.Node, c.Signs, c.WindowStart.Format(time.RFC3339), limit, SignWindow, c.WindowStart.Add(SignWindow).Format(time.RFC3339))
	}
	c.Signs++
	return nil
}

// revokeHolderCerts revokes, inside tx, every unexpired certificate of
// identity ident signed for node that is not revoked yet, and forgets the
// node's current one. It returns the serials revoked.
func revokeHolderCerts(tx *store.Tx, ident, node, reason string, now time.Time) ([]string, error) {
	certs, err := tx.CertsFor(ident)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range certs {
		if c.Node != node || !c.NotAfter.After(now) {
			continue
		}
		if _, err := tx.Revocation(c.Serial); err == nil {
			continue
		}
		if err := tx.PutRevocation(store.Revocation{Serial: c.Serial, Identity: ident, IssuerSerial: c.IssuerSerial,
			Reason: reason, NotAfter: c.NotAfter, RevokedAt: now}); err != nil {
			return nil, err
		}
		out = append(out, c.Serial)
	}
	if err := tx.DeleteHolderCert(ident, node); err != nil {
		return nil, err
	}
	return out, nil
}

// revokeAgentNodeCerts revokes every certificate signed for agent node n,
// for the identities it holds and any it held before.
func revokeAgentNodeCerts(tx *store.Tx, n store.Node, reason string, now time.Time) ([]string, error) {
	idents := slices.Clone(n.Identities)
	hs, err := tx.HolderCertsOfNode(n.Name)
	if err != nil {
		return nil, err
	}
	for _, h := range hs {
		if !slices.Contains(idents, h.Identity) {
			idents = append(idents, h.Identity)
		}
	}
	var out []string
	for _, ident := range idents {
		serials, err := revokeHolderCerts(tx, ident, n.Name, reason, now)
		if err != nil {
			return nil, err
		}
		out = append(out, serials...)
	}
	return out, nil
}

// HolderCerts returns the current certificate of every agent node holding
// identity name, by node name.
func (r *Registry) HolderCerts(ctx context.Context, name string) ([]HolderCert, error) {
	var out []HolderCert
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		out = nil
		id, err := tx.Identity(name)
		if err != nil {
			return err
		}
		hs, err := tx.HolderCertsOfIdentity(name)
		if err != nil {
			return err
		}
		for _, h := range hs {
			c, err := tx.Cert(h.Serial)
			if err != nil {
				return fmt.Errorf("certificate %s of %q on node %q: %w", h.Serial, name, h.Node, err)
			}
			out = append(out, HolderCert{Node: h.Node, Cert: certView(c), State: r.statusAt(id, &c, certRevoked(tx, id, &c)).CertState})
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("identity %q %w", clip(name, identity.MaxNameLength), ErrNotFound)
	}
	return out, err
}
