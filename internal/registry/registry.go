// Package registry keeps meshca's records: identities and their
// certificates, nodes and their join tokens, the mesh document and the
// revocation records, each change written to the store in one transaction
// with its audit records. It never calls xDS: certificates are signed by
// an Issuer it is given (the authority, below it), refusals are audited
// through a denials.Recorder, and everything that follows a change (node
// configuration, closing connections made with a replaced node
// certificate, the CRL) reads it from the store's change feed.
//
// The registry follows the feed itself for one job: while a CA rotation
// moves leaves to a new issuer, RunRekey (on the leader) re-keys every
// active identity whose certificate is from another issuer, with the
// workers of ReissueAll, retrying failures every RekeyRetry; the rotation
// in the authority waits until the store shows none left.
package registry

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/internal/text"
	"github.com/meshca/meshca/mesh"
)

// Sentinel errors. Errors from internal/identity and ca pass through wrapped,
// so callers can also test for those.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	// ErrUnavailable means this replica may not sign now: it has lost
	// contact with the shared store (an Issuer returns it).
	ErrUnavailable = errors.New("unavailable")
)

// Audit actions.
const (
	ActionIdentityAdd = "identity.add"
	ActionCertIssue   = "cert.issue"
)

// Issuer signs certificates with the CA in use; the authority implements
// it. Every method is safe for concurrent use.
type Issuer interface {
	// Issue signs req and names the CA that signed it by its serial. It
	// fails with ErrUnavailable when this replica may not sign now.
	Issue(ctx context.Context, req ca.Request) (issued *ca.Issued, issuerSerial string, err error)
	// BundlePEM is the trust bundle a node receives when it joins.
	BundlePEM() []byte
	// IssuersPEM are the CAs that may sign meshca's server certificate
	// until a node's next renewal: what a joining node pins.
	IssuersPEM(ctx context.Context) []byte
	// Refresh makes Issue sign with the CA the store's CA set names now:
	// the re-keying of a CA rotation may see the switch on the change feed
	// before the Issuer has.
	Refresh(ctx context.Context) error
}

// Config configures a Registry.
type Config struct {
	Store       *store.Store // required
	TrustDomain spiffeid.TrustDomain
	// Issuer signs every certificate the registry records (required).
	Issuer Issuer
	// Lifetimes are the lifetime rules of what the registry issues
	// (default authority.Default()).
	Lifetimes authority.Lifetimes
	// Denials audits the registry's refusals in aggregate; nil makes one
	// of its own on the store, whose summaries are written by nothing but
	// its own Flush: give the one the rest of meshca shares.
	Denials *denials.Recorder
	Clock   clock.Clock
	Logger  *slog.Logger
}

// Registry registers identities and issues their certificates.
type Registry struct {
	cfg Config
	log *slog.Logger
	// issue is the Issuer's Issue; tests replace it to reach failure paths.
	issue func(context.Context, ca.Request) (*ca.Issued, string, error)

	denials *denials.Recorder

	mesh atomic.Pointer[mesh.Mesh]

	reissuingAll atomic.Bool // a ReissueAll is running
	rekey        rekeyState  // see rekey.go

	holdersMu      sync.Mutex
	holders        map[string][]string // identity -> nodes assigned it
	holdersVersion uint64              // the store's NodesVersion when holders was read

	comparedNodeCerts comparedCerts // node certificates found equal to their records (agent.go)
}

// holdersOf returns the nodes identity name is assigned to, for audit
// records. It reads every node only after nodes changed
// (store.NodesVersion), not on each call: a renewal or reissue does not
// scan thousands of nodes.
func (r *Registry) holdersOf(ctx context.Context, name string) ([]string, error) {
	r.holdersMu.Lock()
	defer r.holdersMu.Unlock()
	if v := r.cfg.Store.NodesVersion(); r.holders == nil || r.holdersVersion != v {
		ns, err := r.Nodes(ctx)
		if err != nil {
			return nil, err
		}
		m := make(map[string][]string)
		for _, n := range ns {
			for _, id := range n.Identities {
				m[id] = append(m[id], n.Name)
			}
		}
		r.holders, r.holdersVersion = m, v
	}
	return slices.Clone(r.holders[name]), nil
}

// New builds a registry on the store.
func New(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Store == nil || cfg.Issuer == nil {
		return nil, errors.New("registry: Store and Issuer are required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("registry: TrustDomain is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Lifetimes = cfg.Lifetimes.OrDefault()
	if err := cfg.Lifetimes.Validate(); err != nil {
		return nil, fmt.Errorf("registry: lifetimes: %w", err)
	}
	if cfg.Denials == nil {
		d, err := denials.New(denials.Config{Store: cfg.Store, Clock: cfg.Clock, Logger: cfg.Logger})
		if err != nil {
			return nil, fmt.Errorf("registry: %w", err)
		}
		cfg.Denials = d
	}
	r := &Registry{cfg: cfg, log: cfg.Logger, denials: cfg.Denials}
	r.issue = cfg.Issuer.Issue
	if err := r.loadMesh(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

// deny audits a refused or failed request, aggregated (see package
// denials).
func (r *Registry) deny(ctx context.Context, ev store.Event) { r.denials.Deny(ctx, ev) }

// limitedDeny is deny: every refusal is aggregated the same way.
func (r *Registry) limitedDeny(ctx context.Context, ev store.Event) { r.denials.Deny(ctx, ev) }

// clip shortens s to n bytes on a UTF-8 boundary.
func clip(s string, n int) string { return text.Clip(s, n) }
