// Package registry ties the CA to the store. It registers identities, has the
// CA issue their certificates and records each certificate together with its
// audit records in one transaction, and it keeps the CA material in use:
// generated on first start, or imported by the operator.
package registry

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/authority"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/lograte"
	"github.com/meshca/meshca/internal/store"
	"github.com/meshca/meshca/mesh"
)

// Sentinel errors. Errors from internal/identity and ca pass through wrapped,
// so callers can also test for those.
var (
	ErrNotFound = errors.New("not found")
	ErrExists   = errors.New("already exists")
	ErrCAInUse  = errors.New("the CA has already issued certificates")
)

// Audit actions.
const (
	ActionIdentityAdd = "identity.add"
	ActionCertIssue   = "cert.issue"
	ActionCAInit      = "ca.init"
	ActionCAImport    = "ca.import"
)

// Config configures a Registry.
type Config struct {
	Store       *store.Store // required
	TrustDomain spiffeid.TrustDomain
	// KeyAlgorithm keys a CA generated on first start.
	KeyAlgorithm ca.KeyAlgorithm
	// Lifetimes are the lifetime rules of everything the registry issues
	// (default authority.Default()).
	Lifetimes authority.Lifetimes
	// LintBeforeSigning is ca.Config.LintBeforeSigning.
	LintBeforeSigning bool
	// DenialInterval is how often repeated refusals are summed up in one
	// audit record per source and reason (default DefaultDenialInterval).
	DenialInterval time.Duration
	// OnDenial, when set, counts every refusal or failure exactly, as it
	// happens: the audit log only holds them in aggregate. reason is one
	// of the Reason constants.
	OnDenial func(action, outcome, reason string)
	Clock    clock.Clock
	Logger   *slog.Logger
}

// Registry registers identities and issues their certificates.
type Registry struct {
	cfg Config
	ca  atomic.Pointer[ca.CA]
	log *slog.Logger
	// issue is the CA's Issue; tests replace it to reach failure paths.
	issue func(context.Context, ca.Request) (*ca.Issued, error)

	mu           sync.Mutex
	nodeCertSubs []func(node string) // see SubscribeNodeCerts
	denials      denials             // refusals not yet recorded (denials.go)
	refusalLog   *slog.Logger        // rate limited: refusals can come in floods

	crlMu    sync.Mutex // serializes building and publishing CRLs
	crl      atomic.Pointer[crlState]
	crlStale atomic.Bool // a committed revocation's CRL was not published
	// signCRL is ca.SignCRL; tests replace it to count signatures.
	signCRL  func(*x509.Certificate, crypto.Signer, []ca.Revoked, *big.Int, time.Time, time.Time) ([]byte, error)
	prev     atomic.Pointer[ca.CA] // previous issuer while a root rotation retires it
	rotation atomic.Pointer[Rotation]
	rot      rotationRun // see rotate.go
	mesh     atomic.Pointer[mesh.Mesh]

	autoRotateTried atomic.Pointer[time.Time]
	started         time.Time // when this registry was built, for grace periods

	reissuingAll atomic.Bool // a ReissueAll is running

	caCerts sync.Map // CA serial -> parsed *x509.Certificate

	holdersMu      sync.Mutex
	holders        map[string][]string // identity -> nodes assigned it
	holdersVersion uint64              // the store's NodesVersion when holders was read
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

// announceTrust tells the store's change feed that the trust material
// held here in memory (the CA in use, the signed CRL) changed. Everything
// else the registry changes reaches the feed by being committed.
func (r *Registry) announceTrust() {
	r.cfg.Store.Announce(store.Change{Kind: store.KindTrust})
}

// New loads the CA in use from the store, or generates a root and an
// intermediate on first start (recorded and audited as ca.init).
func New(ctx context.Context, cfg Config) (*Registry, error) {
	if cfg.Store == nil {
		return nil, errors.New("registry: Store is required")
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
	if cfg.DenialInterval <= 0 {
		cfg.DenialInterval = DefaultDenialInterval
	}
	if cfg.KeyAlgorithm == "" {
		cfg.KeyAlgorithm = ca.ECDSAP256
	}
	r := &Registry{cfg: cfg, log: cfg.Logger, started: cfg.Clock.Now(),
		refusalLog: slog.New(lograte.New(cfg.Logger.Handler(), lograte.Config{Now: cfg.Clock.Now}))}
	r.issue = func(ctx context.Context, req ca.Request) (*ca.Issued, error) { return r.CA().Issue(ctx, req) }
	r.signCRL = ca.SignCRL
	if _, err := r.loadCA(ctx); errors.Is(err, store.ErrNotFound) {
		if _, err := r.initCA(ctx); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if err := r.reload(ctx); err != nil {
		return nil, err
	}
	if err := r.loadMesh(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Registry) use(m *ca.Material) error {
	c, err := ca.New(ca.Config{
		TrustDomain:  r.cfg.TrustDomain,
		Material:     m,
		KeyAlgorithm: r.cfg.KeyAlgorithm,
		Backdate:     r.cfg.Lifetimes.Backdate,
		Clock:        r.cfg.Clock,
		Logger:       r.log,

		LintBeforeSigning: r.cfg.LintBeforeSigning,
	})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	r.ca.Store(c)
	return nil
}

// CA returns the CA in use.
func (r *Registry) CA() *ca.CA { return r.ca.Load() }

func (r *Registry) initCA(ctx context.Context) (*ca.Material, error) {
	m, err := ca.Generate(ca.GenerateOptions{
		TrustDomain:     r.cfg.TrustDomain,
		KeyAlgorithm:    r.cfg.KeyAlgorithm,
		RootTTL:         r.cfg.Lifetimes.Root,
		IntermediateTTL: r.cfg.Lifetimes.Intermediate,
		Backdate:        r.cfg.Lifetimes.Backdate,
		Now:             r.cfg.Clock.Now(),
	})
	if err != nil {
		return nil, fmt.Errorf("registry: generate CA: %w", err)
	}
	if err := r.saveCA(ctx, m, store.SourceGenerated, ActionCAInit, "meshca"); err != nil {
		return nil, err
	}
	r.log.Info("generated CA", "root_serial", serialHex(m.Roots[0]), "intermediate_serial", serialHex(m.Issuer), "not_after", m.Issuer.NotAfter)
	return m, nil
}

func (r *Registry) saveCA(ctx context.Context, m *ca.Material, source, action, actor string) error {
	recs := make([]store.CA, 0, 2+len(m.Chain)+len(m.Roots))
	issuer, err := caRecord(m.Issuer, m.IssuerKey, store.RoleIntermediate, source)
	if err != nil {
		return err
	}
	if isSelfSigned(m.Issuer) {
		issuer.Role = store.RoleRoot
	}
	recs = append(recs, issuer)
	set := store.CASet{IssuerSerial: issuer.Serial}
	for _, c := range m.Chain {
		rec, err := caRecord(c, nil, store.RoleIntermediate, source)
		if err != nil {
			return err
		}
		recs = append(recs, rec)
		set.ChainSerials = append(set.ChainSerials, rec.Serial)
	}
	for _, c := range m.Roots {
		var key crypto.Signer
		if c.Equal(m.Roots[0]) {
			key = m.RootKey
		}
		rec, err := caRecord(c, key, store.RoleRoot, source)
		if err != nil {
			return err
		}
		if rec.Serial != issuer.Serial {
			recs = append(recs, rec)
		}
		set.RootSerials = append(set.RootSerials, rec.Serial)
	}
	return r.cfg.Store.Update(ctx, func(tx *store.Tx) error {
		for _, rec := range recs {
			if _, err := tx.CA(rec.Serial); err == nil {
				continue // already known, e.g. a root shared with the current CA
			}
			if err := tx.PutCA(rec); err != nil {
				return err
			}
		}
		if err := tx.SetCASet(set); err != nil {
			return err
		}
		_, err := tx.Append(store.Event{
			Action: action, Actor: actor, Serial: issuer.Serial,
			Detail: fmt.Sprintf("issuer %q not_after=%s roots=%d", m.Issuer.Subject.String(), m.Issuer.NotAfter.UTC().Format(time.RFC3339), len(m.Roots)),
		})
		return err
	})
}

func caRecord(c *x509.Certificate, key crypto.Signer, role, source string) (store.CA, error) {
	rec := store.CA{
		Serial: serialHex(c), Role: role, Source: source, DER: c.Raw,
		NotBefore: c.NotBefore, NotAfter: c.NotAfter,
	}
	if key != nil {
		der, err := x509.MarshalPKCS8PrivateKey(key)
		if err != nil {
			return store.CA{}, fmt.Errorf("registry: marshal CA key: %w", err)
		}
		rec.Key = der
	}
	return rec, nil
}

func (r *Registry) loadCA(ctx context.Context) (*ca.Material, error) {
	m := &ca.Material{}
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if err != nil {
			return err
		}
		issuer, err := tx.CA(set.IssuerSerial)
		if err != nil {
			return fmt.Errorf("registry: issuer %s: %w", set.IssuerSerial, err)
		}
		if m.Issuer, m.IssuerKey, err = parseCA(issuer); err != nil {
			return err
		}
		if m.IssuerKey == nil {
			return fmt.Errorf("registry: issuer %s has no key in the store", set.IssuerSerial)
		}
		for _, s := range set.ChainSerials {
			rec, err := tx.CA(s)
			if err != nil {
				return fmt.Errorf("registry: chain %s: %w", s, err)
			}
			c, _, err := parseCA(rec)
			if err != nil {
				return err
			}
			m.Chain = append(m.Chain, c)
		}
		for i, s := range set.RootSerials {
			rec, err := tx.CA(s)
			if err != nil {
				return fmt.Errorf("registry: root %s: %w", s, err)
			}
			c, key, err := parseCA(rec)
			if err != nil {
				return err
			}
			m.Roots = append(m.Roots, c)
			if i == 0 {
				m.RootKey = key
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

func parseCA(rec store.CA) (*x509.Certificate, crypto.Signer, error) {
	c, err := x509.ParseCertificate(rec.DER)
	if err != nil {
		return nil, nil, fmt.Errorf("registry: CA %s: %w", rec.Serial, err)
	}
	if rec.Key == nil {
		return c, nil, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(rec.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("registry: CA %s: key does not parse", rec.Serial)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("registry: CA %s: key %T cannot sign", rec.Serial, k)
	}
	return c, s, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

// ImportCA makes an operator's CA the issuer, so that meshca chains under the
// organisation's root. It is refused once any certificate has been issued:
// switching a live mesh to another CA is a rotation, not an import.
func (r *Registry) ImportCA(ctx context.Context, certPEM, keyPEM []byte, actor string) error {
	m, err := ca.ParseImport(certPEM, keyPEM, r.cfg.Clock.Now())
	if err != nil {
		r.deny(ctx, store.Event{Action: ActionCAImport, Actor: actor, Detail: err.Error()})
		return err
	}
	if n, err := r.issuedCount(ctx); err != nil {
		return err
	} else if n > 0 {
		err := fmt.Errorf("%w (%d identities hold certificates); import a CA before adding identities", ErrCAInUse, n)
		r.deny(ctx, store.Event{Action: ActionCAImport, Actor: actor, Detail: err.Error()})
		return err
	}
	if err := r.saveCA(ctx, m, store.SourceImported, ActionCAImport, actor); err != nil {
		return err
	}
	if err := r.reload(ctx); err != nil {
		return err
	}
	r.log.Info("imported CA", "issuer_serial", serialHex(m.Issuer), "not_after", m.Issuer.NotAfter)
	return nil
}

func (r *Registry) issuedCount(ctx context.Context) (int, error) {
	n := 0
	err := r.cfg.Store.View(ctx, func(tx *store.Tx) error {
		ids, err := tx.Identities()
		for _, id := range ids {
			if id.CurrentSerial != "" {
				n++
			}
		}
		return err
	})
	return n, err
}
