package registry

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/selector"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/mesh"
)

// Audit actions for nodes.
const (
	ActionNodeAdd      = "node.add"
	ActionNodeToken    = "node.token"
	ActionNodeAssign   = "node.assign"
	ActionNodeUnassign = "node.unassign"
	ActionNodeJoin     = "node.join"
	ActionNodeAuth     = "node.auth"
	ActionNodeRenew    = "node.renew"
	ActionCertReissue  = "identity.reissue"
)

// ErrToken is returned for a join token that is unknown, used or expired.
var ErrToken = errors.New("join token refused")

// AddNode is a request to register a node.
type AddNode struct {
	Name       string
	Kind       string // a mesh node kind; default mesh.KindSidecar
	Identities []string
	// Agent makes an agent node: its agent makes the identities' keys and
	// sends CSRs (SignCSR); meshca never sends it a key.
	Agent bool
	// Selectors, for an agent node, restrict every one of Identities to
	// the local processes they name (see AssignIdentity).
	Selectors []string
}

// JoinToken is a one-time token as handed to the operator. Only its hash is
// stored.
type JoinToken struct {
	Token   string
	Expires time.Time
}

// nodeSubject is the identity field of a node's certificate records.
func nodeSubject(node string) string { return "node/" + node }

// AddNode registers a node with its identities and returns its first join
// token.
func (r *Registry) AddNode(ctx context.Context, req AddNode, actor string) (Node, JoinToken, error) {
	n, tok, err := r.addNode(ctx, req, actor)
	if err != nil && ctx.Err() == nil {
		r.deny(ctx, store.Event{Action: ActionNodeAdd, Actor: actor, Node: clip(req.Name, identity.MaxNameLength), Detail: err.Error()})
	}
	return n, tok, err
}

func (r *Registry) addNode(ctx context.Context, req AddNode, actor string) (Node, JoinToken, error) {
	if _, err := identity.NodeID(r.cfg.TrustDomain, req.Name); err != nil {
		return Node{}, JoinToken{}, err
	}
	if req.Kind == "" {
		req.Kind = mesh.KindSidecar
	}
	if !mesh.IsKind(req.Kind) {
		return Node{}, JoinToken{}, fmt.Errorf("%w: node kind %q: use %s, %s or %s", ErrInvalid, clip(req.Kind, 40), mesh.KindSidecar, mesh.KindFrontProxy, mesh.KindGRPC)
	}
	ids := slices.Clone(req.Identities)
	slices.Sort(ids)
	ids = slices.Compact(ids)
	selectors, err := selector.Normalize(req.Selectors)
	if err != nil {
		return Node{}, JoinToken{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(selectors) > 0 && !req.Agent {
		return Node{}, JoinToken{}, fmt.Errorf("%w: selectors choose processes on an agent node: add --agent, or leave the selectors out", ErrInvalid)
	}
	if len(selectors) > 0 && len(ids) == 0 {
		return Node{}, JoinToken{}, fmt.Errorf("%w: selectors apply to the identities the node is given: name them too", ErrInvalid)
	}
	var perIdentity map[string][]string
	for _, id := range ids {
		perIdentity = withSelectors(perIdentity, id, selectors)
	}
	tok, hash, err := newToken()
	if err != nil {
		return Node{}, JoinToken{}, err
	}
	now := r.cfg.Clock.Now().UTC()
	n := store.Node{Name: req.Name, Kind: req.Kind, Identities: ids, State: store.StateActive, Agent: req.Agent, Selectors: perIdentity, CreatedAt: now, UpdatedAt: now}
	expires := now.Add(r.cfg.Lifetimes.JoinToken)
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		if _, err := tx.Node(req.Name); err == nil {
			return fmt.Errorf("node %q %w", req.Name, ErrExists)
		}
		for _, id := range ids {
			if err := assignable(tx, id); err != nil {
				return err
			}
		}
		if err := r.fitsMesh(n); err != nil {
			return err
		}
		if err := tx.PutNode(n); err != nil {
			return err
		}
		if err := tx.PutJoinToken(store.JoinToken{Node: req.Name, Hash: hash, Expires: expires}); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{Action: ActionNodeAdd, Actor: actor, Node: req.Name,
			Detail: fmt.Sprintf("kind=%s identities=%v agent=%t token_expires=%s", req.Kind, ids, req.Agent, expires.Format(time.RFC3339)) + selectorsDetail(selectors)})
		return err
	})
	if err != nil {
		return Node{}, JoinToken{}, err
	}
	r.log.Info("node added", "node", req.Name, "kind", req.Kind, "identities", len(ids), "actor", actor)
	return nodeView(n), JoinToken{Token: tok, Expires: expires}, nil
}

// ErrInvalid marks a request that is malformed in a way the identity
// package does not cover.
var ErrInvalid = errors.New("invalid request")

func assignable(tx *store.Tx, name string) error {
	id, err := tx.Identity(name)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("identity %q %w: add it first with meshca identity add", clip(name, identity.MaxNameLength), ErrNotFound)
	}
	if err != nil {
		return err
	}
	if id.State != store.StateActive {
		return fmt.Errorf("identity %q is %s: %w", name, id.State, ErrDenied)
	}
	if id.Admin {
		return fmt.Errorf("identity %q has admin access, and a node's proxies must never hold a key that opens the admin API: assign an identity without --admin-access (admin credentials come from meshca cert issue): %w", name, ErrDenied)
	}
	return nil
}

func newToken() (token string, hash []byte, err error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", nil, fmt.Errorf("join token: %w", err)
	}
	token = base64.RawURLEncoding.EncodeToString(b)
	return token, tokenHash(token), nil
}

func tokenHash(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// fitsMesh refuses a node change that the mesh in use cannot serve, such as
// taking away the identity of a listener the mesh gives the node.
func (r *Registry) fitsMesh(n store.Node) error {
	if n.State != store.StateActive || r.Mesh() == nil {
		return nil
	}
	if _, err := r.NodeMesh(nodeView(n)); err != nil {
		return fmt.Errorf("%w: the mesh in use cannot configure node %q after this change: %v (apply a mesh that fits first)", ErrInvalid, n.Name, err)
	}
	return nil
}

// NewJoinToken replaces a node's join token with a fresh one.
func (r *Registry) NewJoinToken(ctx context.Context, name, actor string) (JoinToken, error) {
	tok, hash, err := newToken()
	if err != nil {
		return JoinToken{}, err
	}
	expires := r.cfg.Clock.Now().UTC().Add(r.cfg.Lifetimes.JoinToken)
	err = r.updateNode(ctx, name, func(tx *store.Tx, n *store.Node) (store.Event, error) {
		if n.State != store.StateActive {
			return store.Event{}, fmt.Errorf("node %q was revoked and can never join again: register the machine under a new name (meshca node add NEW-NAME): %w", name, ErrDenied)
		}
		if err := tx.PutJoinToken(store.JoinToken{Node: name, Hash: hash, Expires: expires}); err != nil {
			return store.Event{}, err
		}
		return store.Event{Action: ActionNodeToken, Actor: actor, Node: name, Detail: "token_expires=" + expires.Format(time.RFC3339)}, nil
	})
	if err != nil {
		if ctx.Err() == nil {
			r.deny(ctx, store.Event{Action: ActionNodeToken, Actor: actor, Node: clip(name, identity.MaxNameLength), Detail: err.Error()})
		}
		return JoinToken{}, err
	}
	return JoinToken{Token: tok, Expires: expires}, nil
}

// Assignment gives a node an identity, for the local processes its
// Selectors name (agent nodes only; none: any local caller).
type Assignment struct {
	Node      string
	Identity  string
	Selectors []string // uid:N, gid:N, path:/abs/path; every one must match
}

// Assign gives a node an identity; its proxies receive the identity's
// secret from then on. Any selectors the assignment had are dropped.
func (r *Registry) Assign(ctx context.Context, node, ident, actor string) (Node, error) {
	return r.AssignIdentity(ctx, Assignment{Node: node, Identity: ident}, actor)
}

// AssignIdentity gives a node an identity, or changes the selectors of an
// identity it holds: the assignment is then exactly a, so an assignment
// without selectors serves any local caller again. Selectors are for agent
// nodes, whose agent attests the local callers; another node refuses them.
func (r *Registry) AssignIdentity(ctx context.Context, a Assignment, actor string) (Node, error) {
	n, err := r.assignIdentity(ctx, a, actor)
	if err != nil {
		r.deny(ctx, store.Event{Action: ActionNodeAssign, Actor: actor, Node: clip(a.Node, identity.MaxNameLength), Identity: clip(a.Identity, identity.MaxNameLength), Detail: err.Error()})
		return Node{}, err
	}
	return nodeView(n), nil
}

func (r *Registry) assignIdentity(ctx context.Context, a Assignment, actor string) (store.Node, error) {
	selectors, err := selector.Normalize(a.Selectors)
	if err != nil {
		return store.Node{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	var out store.Node
	err = r.updateNode(ctx, a.Node, func(tx *store.Tx, n *store.Node) (store.Event, error) {
		if err := assignable(tx, a.Identity); err != nil {
			return store.Event{}, err
		}
		if len(selectors) > 0 && !n.Agent {
			return store.Event{}, fmt.Errorf("%w: selectors choose processes on an agent node, and node %q is not one: its proxies receive keys over xDS (register an agent node with meshca node add --agent)", ErrInvalid, n.Name)
		}
		if !slices.Contains(n.Identities, a.Identity) {
			n.Identities = append(n.Identities, a.Identity)
			slices.Sort(n.Identities)
		}
		n.Selectors = withSelectors(n.Selectors, a.Identity, selectors)
		out = *n
		return store.Event{Action: ActionNodeAssign, Actor: actor, Node: n.Name, Identity: a.Identity, Detail: strings.TrimSpace(selectorsDetail(selectors))}, nil
	})
	return out, err
}

// selectorsDetail is the audit detail of selectors: " selectors=[...]",
// or "" for none.
func selectorsDetail(selectors []string) string {
	if len(selectors) == 0 {
		return ""
	}
	return fmt.Sprintf(" selectors=%v", selectors)
}

// withSelectors returns m, a copy, with ident's selectors set (nil:
// removed); nil when nothing is left.
func withSelectors(m map[string][]string, ident string, selectors []string) map[string][]string {
	out := make(map[string][]string, len(m)+1)
	for k, v := range m {
		out[k] = v
	}
	if len(selectors) > 0 {
		out[ident] = selectors
	} else {
		delete(out, ident)
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// Unassign takes an identity from a node; its secret is no longer served to
// the node's proxies.
func (r *Registry) Unassign(ctx context.Context, node, ident, actor string) (Node, error) {
	var out store.Node
	err := r.updateNode(ctx, node, func(tx *store.Tx, n *store.Node) (store.Event, error) {
		i := slices.Index(n.Identities, ident)
		if i < 0 {
			return store.Event{}, fmt.Errorf("node %q does not hold identity %q: %w", node, clip(ident, identity.MaxNameLength), ErrNotFound)
		}
		n.Identities = slices.Delete(n.Identities, i, i+1)
		n.Selectors = withSelectors(n.Selectors, ident, nil)
		out = *n
		ev := store.Event{Action: ActionNodeUnassign, Actor: actor, Node: node, Identity: ident}
		if n.Agent {
			// The node's own certificates for the identity go on the CRL;
			// the other holders keep theirs.
			revoked, err := revokeHolderCerts(tx, ident, node, "identity unassigned from the node", r.cfg.Clock.Now().UTC())
			if err != nil {
				return store.Event{}, err
			}
			ev.Detail = fmt.Sprintf("revoked_node_certificates=%v", revoked)
		}
		return ev, nil
	})
	if err != nil {
		r.deny(ctx, store.Event{Action: ActionNodeUnassign, Actor: actor, Node: clip(node, identity.MaxNameLength), Identity: clip(ident, identity.MaxNameLength), Detail: err.Error()})
		return Node{}, err
	}
	return nodeView(out), nil
}

// updateNode reads, changes and writes one node with its audit record in
// one transaction.
func (r *Registry) updateNode(ctx context.Context, name string, change func(*store.Tx, *store.Node) (store.Event, error)) error {
	return r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		n, err := tx.Node(name)
		if errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("node %q %w", clip(name, identity.MaxNameLength), ErrNotFound)
		}
		if err != nil {
			return err
		}
		ev, err := change(tx, &n)
		if err != nil {
			return err
		}
		if err := r.fitsMesh(n); err != nil {
			return err
		}
		n.UpdatedAt = r.cfg.Clock.Now().UTC()
		if err := tx.PutNode(n); err != nil {
			return err
		}
		_, err = tx.Append(ev)
		return err
	})
}

// Node returns a registered node.
func (r *Registry) Node(ctx context.Context, name string) (Node, error) {
	var n store.Node
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		n, err = tx.Node(name)
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return Node{}, fmt.Errorf("node %q %w", clip(name, identity.MaxNameLength), ErrNotFound)
	}
	if err != nil {
		return Node{}, err
	}
	return nodeView(n), nil
}

// Nodes lists the registered nodes, sorted by name.
func (r *Registry) Nodes(ctx context.Context) ([]Node, error) {
	var ns []store.Node
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		ns, err = tx.Nodes()
		return err
	})
	if err != nil {
		return nil, err
	}
	return views(ns, nodeView), nil
}

// Joined is what a node receives for its join token.
type Joined struct {
	Node        Node
	TrustDomain string
	ChainPEM    []byte // node certificate and intermediates
	BundlePEM   []byte
	// IssuersPEM are the CAs that may sign meshca's server certificate
	// until the node's next renewal: what the node pins when it renews.
	IssuersPEM []byte
	Serial     string
	NotAfter   time.Time
}

// Node renewal limit: a node renews about every 12 hours, so a burst of
// renewals is a loop or a stolen key.
const (
	RenewBurst  = 3
	RenewWindow = 10 * time.Minute
)

// ErrRateLimited is returned for a renewal beyond the node's limit.
var ErrRateLimited = errors.New("too many renewals")

// joinRefused is all an unauthenticated caller learns of a refused join
// token: whether the node exists, was revoked or the token was wrong stays
// in the audit record.
func joinRefused(node string) error {
	return fmt.Errorf("%w: the join token is not valid for node %q (mistyped, already used, replaced or expired, or the node is not an active registered node); ask the operator for a new one: meshca node token %s", ErrToken, node, node)
}

// Join redeems a node's one-time join token for a node certificate
// (spiffe://<td>/node/NAME) issued to the CSR's key. The token is consumed in
// the same transaction that records the certificate, and every earlier
// certificate of the node is revoked in it: a node has one valid
// certificate. A refused token is audited with its real reason; the caller
// gets the same answer for every reason.
func (r *Registry) Join(ctx context.Context, node, token string, csrDER []byte, actor string) (Joined, error) {
	j, err := r.join(ctx, node, token, csrDER, actor)
	if err != nil && ctx.Err() == nil {
		r.limitedDeny(ctx, store.Event{Action: ActionNodeJoin, Actor: actor, Node: clip(node, identity.MaxNameLength), Detail: err.Error()})
		if errors.Is(err, ErrToken) {
			return Joined{}, joinRefused(node)
		}
	}
	return j, err
}

func (r *Registry) join(ctx context.Context, node, token string, csrDER []byte, actor string) (Joined, error) {
	id, err := identity.NodeID(r.cfg.TrustDomain, node)
	if err != nil {
		return Joined{}, err
	}
	n, err := r.checkToken(ctx, node, token)
	if err != nil {
		return Joined{}, err
	}
	issued, issuerSerial, err := r.issue(ctx, ca.Request{ID: id, TTL: r.cfg.Lifetimes.Node, CSR: csrDER})
	if err != nil {
		return Joined{}, err
	}
	cert := certRecord(nodeSubject(node), issued, issuerSerial, r.cfg.Clock.Now().UTC())
	var revoked []string
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		revoked = nil
		cur, err := tx.Node(node)
		if err != nil {
			return err
		}
		// The token may have been used or replaced, or the node revoked,
		// since checkToken.
		tok, err := tx.JoinToken(node)
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return err
		}
		if cur.State != store.StateActive || subtle.ConstantTimeCompare(tok.Hash, tokenHash(token)) != 1 {
			return fmt.Errorf("%w: the join token for node %q was used or replaced, or the node revoked, meanwhile", ErrToken, node)
		}
		now := r.cfg.Clock.Now().UTC()
		// A new join replaces every certificate the node had: a copy
		// taken from the old machine stops working now.
		if revoked, err = revokeNodeCerts(tx, node, "", "replaced by a new join", now); err != nil {
			return err
		}
		if cur.Agent {
			// So are the certificates its agent had signed: their keys
			// may be on the old machine.
			signed, err := revokeAgentNodeCerts(tx, cur, "replaced by a new join of the node", now)
			if err != nil {
				return err
			}
			revoked = append(revoked, signed...)
		}
		if err := tx.DeleteJoinToken(node); err != nil {
			return err
		}
		cur.CertSerial, cur.NextSerial = cert.Serial, ""
		cur.NewestIssuer, cur.NewestNotAfter = cert.IssuerSerial, cert.NotAfter
		cur.UpdatedAt = now
		if cur.JoinedAt.IsZero() {
			cur.JoinedAt = now
		}
		if err := tx.PutNode(cur); err != nil {
			return err
		}
		if err := tx.PutCert(cert.Cert, cert.Key); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionNodeJoin, Actor: actor, Node: node, Serial: cert.Serial,
			Detail: fmt.Sprintf("node certificate; not_after=%s revoked_previous=%d", cert.NotAfter.Format(time.RFC3339), len(revoked))})
		n = cur
		return err
	})
	if err != nil {
		return Joined{}, err
	}
	// Connections made with the revoked certificates end when the change
	// feed reports the node's record (nodeconfig.CertWatch).
	r.log.Info("node joined", "node", node, "serial", cert.Serial, "not_after", cert.NotAfter, "revoked_previous", len(revoked))
	return r.joined(ctx, n, cert.Cert), nil
}

// revokeNodeCerts revokes, inside tx, every unexpired certificate of node
// but keep that is not revoked yet, and returns their serials.
func revokeNodeCerts(tx *store.Tx, node, keep, reason string, now time.Time) ([]string, error) {
	certs, err := tx.CertsFor(nodeSubject(node))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, c := range certs {
		if c.Serial == keep || !c.NotAfter.After(now) {
			continue
		}
		if _, err := tx.Revocation(c.Serial); err == nil {
			continue
		}
		if err := tx.PutRevocation(store.Revocation{Serial: c.Serial, Identity: nodeSubject(node), IssuerSerial: c.IssuerSerial,
			Reason: reason, NotAfter: c.NotAfter, RevokedAt: now}); err != nil {
			return nil, err
		}
		out = append(out, c.Serial)
	}
	return out, nil
}

// RenewNode issues a new node certificate to an authenticated, active node
// for the CSR's key, recorded and audited in one transaction. The node's
// other certificates are revoked when the new one is first used (see
// AuthenticateNode). Renewals are limited to RenewBurst per RenewWindow per
// node, counted in the store.
func (r *Registry) RenewNode(ctx context.Context, node string, presented *x509.Certificate, csrDER []byte) (Joined, error) {
	j, err := r.renewNode(ctx, node, presented, csrDER)
	if err != nil && ctx.Err() == nil {
		ev := store.Event{Action: ActionNodeRenew, Actor: "node:" + clip(node, 100), Node: clip(node, identity.MaxNameLength), Detail: err.Error()}
		if errors.Is(err, ErrRateLimited) {
			r.limitedDeny(ctx, ev) // a node in a loop must not flood the audit log
		} else {
			r.deny(ctx, ev)
		}
	}
	return j, err
}

// stillCurrent checks that presented is the node certificate n uses now, or
// its renewed one not yet used, byte for byte as recorded, and not revoked.
func stillCurrent(tx *store.Tx, n store.Node, presented *x509.Certificate) error {
	serial := serialHex(presented)
	if n.CertSerial != "" && serial != n.CertSerial && serial != n.NextSerial {
		return fmt.Errorf("node %q: certificate %s was replaced; renew with the node's current certificate: %w", n.Name, serial, ErrDenied)
	}
	c, err := tx.Cert(serial)
	if err != nil || c.Identity != nodeSubject(n.Name) || !bytes.Equal(c.DER, presented.Raw) {
		return fmt.Errorf("node %q: certificate %s is not one meshca issued to it: %w", n.Name, serial, ErrDenied)
	}
	if _, err := tx.Revocation(serial); err == nil {
		return fmt.Errorf("node %q: certificate %s is revoked: %w", n.Name, serial, ErrDenied)
	}
	return nil
}

// renewAllowed counts a renewal of n at now, or says when the next one is
// allowed.
func renewAllowed(n *store.Node, now time.Time) error {
	if now.Sub(n.RenewWindowStart) >= RenewWindow || now.Before(n.RenewWindowStart) {
		n.RenewWindowStart, n.Renewals = now, 0
	}
	if n.Renewals >= RenewBurst {
		return fmt.Errorf("%w: node %q renewed its certificate %d times since %s; the next renewal is allowed at %s (a node renews about twice a day: look for a renewal loop, or a copy of the node key in other hands)",
			ErrRateLimited, n.Name, n.Renewals, n.RenewWindowStart.Format(time.RFC3339), n.RenewWindowStart.Add(RenewWindow).Format(time.RFC3339))
	}
	n.Renewals++
	return nil
}

func (r *Registry) renewNode(ctx context.Context, node string, presented *x509.Certificate, csrDER []byte) (Joined, error) {
	if presented == nil {
		return Joined{}, fmt.Errorf("node %q: a renewal must be made with the node's certificate: %w", node, ErrDenied)
	}
	id, err := identity.NodeID(r.cfg.TrustDomain, node)
	if err != nil {
		return Joined{}, err
	}
	// Refuse before signing anything; the transaction below decides.
	var n store.Node
	err = r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { n, err = tx.Node(node); return err })
	if err != nil {
		return Joined{}, fmt.Errorf("node %q: %w", node, err)
	}
	if n.State != store.StateActive {
		return Joined{}, fmt.Errorf("node %q was revoked: %w", node, ErrDenied)
	}
	if err := renewAllowed(&n, r.cfg.Clock.Now().UTC()); err != nil {
		return Joined{}, err
	}
	issued, issuerSerial, err := r.issue(ctx, ca.Request{ID: id, TTL: r.cfg.Lifetimes.Node, CSR: csrDER})
	if err != nil {
		return Joined{}, err
	}
	cert := certRecord(nodeSubject(node), issued, issuerSerial, r.cfg.Clock.Now().UTC())
	var dropped []string
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		dropped = nil
		var err error
		if n, err = tx.Node(node); err != nil {
			return err
		}
		if n.State != store.StateActive {
			return fmt.Errorf("node %q was revoked: %w", node, ErrDenied)
		}
		// The call's certificate may have been replaced since its
		// connection was made (a new join, or the renewed certificate
		// used): only the node's current certificate renews.
		if err := stillCurrent(tx, n, presented); err != nil {
			return err
		}
		now := r.cfg.Clock.Now().UTC()
		if err := renewAllowed(&n, now); err != nil {
			return err
		}
		// A renewed certificate that was never used is replaced: revoke it.
		if prev := n.NextSerial; prev != "" {
			c, err := tx.Cert(prev)
			if err == nil && c.NotAfter.After(now) {
				if _, err := tx.Revocation(prev); err != nil {
					if err := tx.PutRevocation(store.Revocation{Serial: prev, Identity: nodeSubject(node), IssuerSerial: c.IssuerSerial,
						Reason: "replaced before use by a newer renewal", NotAfter: c.NotAfter, RevokedAt: now}); err != nil {
						return err
					}
					dropped = append(dropped, prev)
				}
			}
		}
		n.NextSerial, n.UpdatedAt = cert.Serial, now
		n.NewestIssuer, n.NewestNotAfter = cert.IssuerSerial, cert.NotAfter
		if err := tx.PutNode(n); err != nil {
			return err
		}
		if err := tx.PutCert(cert.Cert, cert.Key); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionNodeRenew, Actor: "node:" + node, Node: node, Serial: cert.Serial,
			Detail: fmt.Sprintf("node certificate; not_after=%s renewals_in_window=%d revoked_unused=%v", cert.NotAfter.Format(time.RFC3339), n.Renewals, dropped)})
		return err
	})
	if err != nil {
		return Joined{}, err
	}
	r.log.Info("node certificate renewed", "node", node, "serial", cert.Serial, "not_after", cert.NotAfter)
	return r.joined(ctx, n, cert.Cert), nil
}

// joined is what a node gets back for its new certificate.
func (r *Registry) joined(ctx context.Context, n store.Node, cert store.Cert) Joined {
	return Joined{
		Node: nodeView(n), TrustDomain: r.cfg.TrustDomain.Name(), ChainPEM: chainPEM(cert.DER, cert.Chain),
		BundlePEM: r.cfg.Issuer.BundlePEM(), IssuersPEM: r.cfg.Issuer.IssuersPEM(context.WithoutCancel(ctx)), Serial: cert.Serial, NotAfter: cert.NotAfter,
	}
}

// checkToken says exactly why a token is refused; Join keeps that for the
// audit record and answers the caller alike for every reason.
func (r *Registry) checkToken(ctx context.Context, node, token string) (store.Node, error) {
	var (
		n   store.Node
		tok store.JoinToken
	)
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) {
		if n, err = tx.Node(node); err != nil {
			return err
		}
		if tok, err = tx.JoinToken(node); errors.Is(err, store.ErrNotFound) {
			tok, err = store.JoinToken{}, nil
		}
		return err
	})
	if errors.Is(err, store.ErrNotFound) {
		return store.Node{}, fmt.Errorf("%w: node %q is not registered", ErrToken, node)
	}
	if err != nil {
		return store.Node{}, err
	}
	// Compare the token whatever the node's state, so that the answer
	// takes as long for a revoked node as for a wrong token.
	match := len(tok.Hash) > 0 && subtle.ConstantTimeCompare(tok.Hash, tokenHash(token)) == 1
	if n.State != store.StateActive {
		return store.Node{}, fmt.Errorf("%w: node %q is %s", ErrToken, node, n.State)
	}
	if !match {
		return store.Node{}, fmt.Errorf("%w: the token for node %q is not valid (already used, replaced, or mistyped)", ErrToken, node)
	}
	if now := r.cfg.Clock.Now(); !now.Before(tok.Expires) {
		return store.Node{}, fmt.Errorf("%w: the token for node %q expired at %s", ErrToken, node, tok.Expires.Format(time.RFC3339))
	}
	return n, nil
}

// ActionNodeCertSwitch records the first use of a renewed node
// certificate, which revokes the node's earlier ones.
const ActionNodeCertSwitch = "node.cert.switch"

// AuthenticateNode maps a client certificate that already verified against
// meshca's issuing CAs to a node name. Its SPIFFE ID must be
// spiffe://<td>/node/NAME of an active node, and it must be, byte for byte,
// the node certificate meshca issued and recorded under its serial: the one
// in use or, on its first use, the node's renewed one, which then revokes
// every other. For a certificate of a revoked node the error wraps
// ErrNodeRevoked. A refusal is audited.
//
// It runs on every TLS handshake of a node, and reads from the store each
// time the node, the revocation record of its certificate and the CA set
// (the certificate's issuer must still be one meshca issues from: the
// caller may have verified the chain against CAs learned from the change
// feed, which can lag a rotation), and the certificate record only the
// first time (comparedCerts); on etcd all in one round trip.
func (r *Registry) AuthenticateNode(ctx context.Context, leaf *x509.Certificate) (string, error) {
	node, promote, err := r.authenticateNode(ctx, leaf)
	if err == nil && promote {
		err = r.switchNodeCert(ctx, node, serialHex(leaf))
	}
	if err != nil {
		who := ""
		if len(leaf.URIs) > 0 {
			who = clip(leaf.URIs[0].String(), identity.MaxIDLength)
		}
		r.deny(ctx, store.Event{Action: ActionNodeAuth, Actor: who, Node: node, Serial: serialHex(leaf), Detail: err.Error()})
	}
	return node, err
}

func (r *Registry) authenticateNode(ctx context.Context, leaf *x509.Certificate) (string, bool, error) {
	if len(leaf.URIs) != 1 {
		return "", false, fmt.Errorf("client certificate has %d URI SANs, want one node SPIFFE ID: %w", len(leaf.URIs), ErrDenied)
	}
	id, err := identity.ParseID(r.cfg.TrustDomain, leaf.URIs[0].String())
	if err != nil {
		return "", false, fmt.Errorf("%v: %w", err, ErrDenied)
	}
	node, ok := nodeFromPath(id.Path())
	if !ok {
		return "", false, fmt.Errorf("%s is not a node identity: %w", id, ErrDenied)
	}
	serial := serialHex(leaf)
	promote := false
	// A certificate found equal to its record before need not be read
	// again: records are never rewritten (see comparedCerts).
	issuer, compared := r.comparedNodeCerts.comparedIssuer(node, leaf)
	compared = compared && r.cfg.Clock.Now().Before(leaf.NotAfter)
	err = r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		keys := []store.Key{store.NodeKey(node), store.RevocationKey(serial), store.CASetKey()}
		if !compared {
			keys = append(keys, store.CertKey(serial))
		}
		if err := tx.Prefetch(keys...); err != nil {
			return err
		}
		n, err := tx.Node(node)
		if err != nil {
			return fmt.Errorf("node %q: %v: %w", node, err, ErrDenied)
		}
		if !compared {
			c, err := tx.Cert(serial)
			if err != nil || c.Identity != nodeSubject(node) {
				return fmt.Errorf("certificate %s was not issued to node %q: %w", serial, node, ErrDenied)
			}
			if !bytes.Equal(c.DER, leaf.Raw) {
				return fmt.Errorf("certificate %s is not the one meshca issued with that serial: %w", serial, ErrDenied)
			}
			issuer = c.IssuerSerial
		}
		if err := issuedByIssuing(tx, serial, issuer); err != nil {
			return err
		}
		if n.State != store.StateActive {
			return fmt.Errorf("node %q is %s: %w: %w", node, n.State, ErrNodeRevoked, ErrDenied)
		}
		if _, err := tx.Revocation(serial); err == nil {
			return fmt.Errorf("certificate %s of node %q is revoked: %w", serial, node, ErrDenied)
		}
		switch {
		case serial == n.NextSerial:
			promote = true
		case n.CertSerial == "" || serial == n.CertSerial:
		default:
			return fmt.Errorf("certificate %s of node %q was replaced by a newer one: %w", serial, node, ErrDenied)
		}
		return nil
	})
	if err == nil && !compared {
		r.comparedNodeCerts.addIssued(node, leaf, issuer)
	}
	return node, promote, err
}

// switchNodeCert makes a renewed certificate on its first use the node's
// one valid certificate, revoking every other, with the new CRL pushed.
func (r *Registry) switchNodeCert(ctx context.Context, node, serial string) error {
	var revoked []string
	err := r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		revoked = nil
		n, err := tx.Node(node)
		if err != nil {
			return err
		}
		if n.State != store.StateActive {
			return fmt.Errorf("node %q was revoked: %w", node, ErrDenied)
		}
		if n.CertSerial == serial {
			return nil // another connection switched first
		}
		if n.NextSerial != serial {
			return fmt.Errorf("certificate %s of node %q was replaced by a newer one: %w", serial, node, ErrDenied)
		}
		now := r.cfg.Clock.Now().UTC()
		if revoked, err = revokeNodeCerts(tx, node, serial, "superseded by the node's renewed certificate", now); err != nil {
			return err
		}
		n.CertSerial, n.NextSerial, n.UpdatedAt = serial, "", now
		if err := tx.PutNode(n); err != nil {
			return err
		}
		_, err = tx.Append(store.Event{Action: ActionNodeCertSwitch, Actor: "node:" + node, Node: node, Serial: serial,
			Detail: fmt.Sprintf("renewed certificate in use; revoked_previous=%d", len(revoked))})
		return err
	})
	if err != nil {
		return err
	}
	if len(revoked) > 0 {
		// Connections made with the earlier certificates end when the
		// change feed reports the node's record (nodeconfig.CertWatch);
		// this handshake's is made with the one kept.
		r.log.Info("node switched to its renewed certificate", "node", node, "serial", serial, "revoked_previous", len(revoked))
	}
	return nil
}

// nodeFromPath returns NAME for the SPIFFE path /node/NAME.
func nodeFromPath(path string) (string, bool) {
	const prefix = "/node/"
	if len(path) <= len(prefix) || path[:len(prefix)] != prefix {
		return "", false
	}
	name := path[len(prefix):]
	for i := 0; i < len(name); i++ {
		if name[i] == '/' {
			return "", false
		}
	}
	return name, true
}

// Credential is an identity's current certificate and key as served over
// SDS.
type Credential struct {
	Identity string
	SPIFFEID string
	Serial   string
	ChainPEM []byte
	KeyPEM   []byte
	NotAfter time.Time
}

// NodeCredentials returns a node and the credentials of the active
// identities assigned to it. This is the one place private keys leave the
// store: to be sent to the node's proxies.
func (r *Registry) NodeCredentials(ctx context.Context, node string) (Node, []Credential, error) {
	var (
		n     store.Node
		creds []Credential
	)
	now := r.cfg.Clock.Now()
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		var err error
		if n, err = tx.Node(node); err != nil {
			return err
		}
		for _, name := range n.Identities {
			id, err := tx.Identity(name)
			if errors.Is(err, store.ErrNotFound) {
				r.log.Error("node holds an identity that is not registered", "identity", name, "node", node)
				continue
			}
			if err != nil {
				// Never answer with fewer secrets than the node holds
				// because a read failed: the caller would withdraw them.
				return fmt.Errorf("identity %q: %w", name, err)
			}
			if id.State != store.StateActive || id.CurrentSerial == "" || n.Agent {
				continue // an agent node makes its own keys
			}
			if id.Admin {
				// Only a store written before admin identities were kept
				// from nodes can hold this assignment: serve nothing.
				r.log.Error("not serving an admin identity to a node; unassign it", "identity", name, "node", node)
				continue
			}
			c, err := tx.Credential(id.CurrentSerial)
			if err != nil {
				return fmt.Errorf("identity %q: %w", name, err)
			}
			if c.Key == nil {
				continue
			}
			if !now.Before(c.NotAfter) {
				// Never serve an expired certificate as if it were fine;
				// the rotation loop alarms long before this.
				r.log.Error("not serving an expired certificate", "identity", name, "serial", c.Serial, "not_after", c.NotAfter)
				continue
			}
			creds = append(creds, Credential{
				Identity: name, SPIFFEID: id.SPIFFEID, Serial: c.Serial, ChainPEM: chainPEM(c.DER, c.Chain),
				KeyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: c.Key}), NotAfter: c.NotAfter,
			})
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return Node{}, nil, fmt.Errorf("node %q %w", clip(node, identity.MaxNameLength), ErrNotFound)
	}
	if err != nil {
		return Node{}, nil, err
	}
	return nodeView(n), creds, nil
}

// WithdrawnSecrets names the SPIFFE IDs of revoked (or admin) identities
// still assigned to a node: its proxies may keep asking for those secrets (a
// listener references them) and must not lose their stream for it, but get
// nothing.
func (r *Registry) WithdrawnSecrets(ctx context.Context, node string) ([]string, error) {
	var out []string
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		n, err := tx.Node(node)
		if err != nil {
			return err
		}
		for _, name := range n.Identities {
			id, err := tx.Identity(name)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return fmt.Errorf("identity %q: %w", name, err)
			}
			if id.State == store.StateRevoked || id.Admin {
				out = append(out, id.SPIFFEID)
			}
		}
		return nil
	})
	if errors.Is(err, store.ErrNotFound) {
		return nil, nil
	}
	return out, err
}

// ChainPEM is a certificate and its intermediates as PEM; never the key.
func ChainPEM(c Cert) []byte { return chainPEM(c.DER, c.Chain) }

func chainPEM(leaf []byte, chain [][]byte) []byte {
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leaf})
	for _, der := range chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}

// ReissueIdentity issues a new current certificate for an identity and
// pushes it to every node that holds the identity.
func (r *Registry) ReissueIdentity(ctx context.Context, name, actor string) (Status, error) {
	st, _, err := r.reissue(ctx, name, actor, ActionCertReissue, "")
	if err != nil {
		if !errors.Is(err, ca.ErrLint) && ctx.Err() == nil {
			r.deny(ctx, store.Event{Action: ActionCertReissue, Actor: actor, Identity: clip(name, identity.MaxNameLength), Detail: err.Error()})
		}
		return Status{}, err
	}
	return st, nil
}

// reissue re-keys identity name under the CA in use and records the new
// certificate with an audit record of action, whose detail ends with note
// when there is one (a CA rotation tells its re-keys apart from routine
// renewals this way); the nodes that hold it learn of it from the store's
// change feed.
func (r *Registry) reissue(ctx context.Context, name, actor, action, note string) (Status, []string, error) {
	// The identity record alone: its certificate is not needed here, and
	// a re-key of every identity reads each one.
	var cur store.Identity
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) (err error) { cur, err = tx.Identity(name); return err })
	if errors.Is(err, store.ErrNotFound) {
		return Status{}, nil, fmt.Errorf("identity %q %w", clip(name, identity.MaxNameLength), ErrNotFound)
	} else if err != nil {
		return Status{}, nil, err
	}
	if cur.State != store.StateActive {
		return Status{}, nil, fmt.Errorf("identity %q is %s: %w", name, cur.State, ErrDenied)
	}
	id, err := identity.ID(r.cfg.TrustDomain, name)
	if err != nil {
		return Status{}, nil, err
	}
	issued, issuerSerial, err := r.issue(ctx, ca.Request{ID: id, DNSNames: cur.DNSNames, TTL: cur.TTL})
	if err != nil {
		if errors.Is(err, ca.ErrLint) {
			r.deny(ctx, store.Event{Action: ActionCertIssue, Actor: actor, Identity: name, Outcome: store.OutcomeFailed, Detail: err.Error()})
		}
		return Status{}, nil, err
	}
	now := r.cfg.Clock.Now().UTC()
	cert := certRecord(name, issued, issuerSerial, now)
	// Holders are for the audit record; the nodes are told through the
	// store's change feed.
	before, err := r.holdersOf(ctx, name)
	if err != nil {
		return Status{}, nil, err
	}
	var ident store.Identity
	err = r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		var err error
		if ident, err = tx.Identity(name); err != nil {
			return err
		}
		// Revoked while the certificate was being signed: record nothing.
		if ident.State != store.StateActive {
			return fmt.Errorf("identity %q is %s: %w", name, ident.State, ErrDenied)
		}
		prev := ident.CurrentSerial
		ident.CurrentSerial, ident.UpdatedAt = cert.Serial, now
		if err := tx.PutCert(cert.Cert, cert.Key); err != nil {
			return err
		}
		if err := tx.PutIdentity(ident); err != nil {
			return err
		}
		detail := fmt.Sprintf("replaces=%s not_after=%s nodes=%d", prev, cert.NotAfter.Format(time.RFC3339), len(before))
		if note != "" {
			detail += " " + note
		}
		_, err = tx.Append(store.Event{Action: action, Actor: actor, Identity: name, Serial: cert.Serial, Detail: detail})
		return err
	})
	if err != nil {
		return Status{}, nil, fmt.Errorf("record certificate for %q: %w", name, err)
	}
	r.log.Info("identity reissued", "identity", name, "serial", cert.Serial, "not_after", cert.NotAfter, "nodes", len(before), "actor", actor)
	return r.status(ident, &cert.Cert), before, nil
}
