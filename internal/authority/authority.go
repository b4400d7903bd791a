package authority

import (
	"context"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/denials"
	"github.com/meshca/meshca/internal/store"
)

// Audit actions of the CA material.
const (
	ActionCAInit   = "ca.init"
	ActionCAImport = "ca.import"
	// ActionCertIssue audits meshca's own server certificate, like every
	// certificate the registry issues.
	ActionCertIssue = "cert.issue"
)

// Config configures an Authority.
type Config struct {
	Store       *store.Store // required
	TrustDomain spiffeid.TrustDomain
	// KeyAlgorithm keys a CA generated on first start or by a rotation.
	KeyAlgorithm ca.KeyAlgorithm
	// Lifetimes are the lifetime rules (default Default()).
	Lifetimes Lifetimes
	// LintBeforeSigning is ca.Config.LintBeforeSigning.
	LintBeforeSigning bool
	// Denials audits refusals in aggregate; nil writes each one to the
	// audit log.
	Denials *denials.Recorder
	// Replica is this process's ID among the replicas sharing the store
	// (store.Replica.ID): on etcd, a rotation counts the nodes of the other
	// replicas from their reports (RunAckReport), and its own directly.
	Replica string
	Clock   clock.Clock
	Logger  *slog.Logger
}

// Authority holds the CA material in use, issues from it, rotates it,
// signs the CRL and issues meshca's own server certificate.
type Authority struct {
	cfg Config
	log *slog.Logger

	ca   atomic.Pointer[ca.CA]
	prev atomic.Pointer[ca.CA] // previous issuer while a rotation retires it
	// loaded is the CA set the CA in use was built from.
	loadMu sync.Mutex
	loaded atomic.Pointer[store.CASet]

	rotation        atomic.Pointer[Rotation]
	rot             rotationRun // see rotate.go
	autoRotateTried atomic.Pointer[time.Time]
	started         time.Time // when this authority was built, for grace periods

	crlMu    sync.Mutex  // one CRL signed at a time
	crlStale atomic.Bool // a committed revocation's CRL was not stored
	// signCRL is ca.SignCRL; tests replace it to count signatures.
	signCRL func(*x509.Certificate, crypto.Signer, []ca.Revoked, *big.Int, time.Time, time.Time) ([]byte, error)

	caCerts sync.Map // CA serial -> parsed *x509.Certificate
}

// New loads the CA in use from the store, or generates a root and an
// intermediate on first start (recorded and audited as ca.init).
func New(ctx context.Context, cfg Config) (*Authority, error) {
	if cfg.Store == nil {
		return nil, errors.New("authority: Store is required")
	}
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("authority: TrustDomain is required")
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.Real{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Lifetimes = cfg.Lifetimes.OrDefault()
	if err := cfg.Lifetimes.Validate(); err != nil {
		return nil, fmt.Errorf("authority: lifetimes: %w", err)
	}
	if cfg.KeyAlgorithm == "" {
		cfg.KeyAlgorithm = ca.ECDSAP256
	}
	a := &Authority{cfg: cfg, log: cfg.Logger, started: cfg.Clock.Now(), signCRL: ca.SignCRL}
	if _, err := a.loadCA(ctx); errors.Is(err, store.ErrNotFound) {
		if _, err := a.initCA(ctx); err != nil {
			return nil, err
		}
	} else if err != nil {
		return nil, err
	}
	if err := a.reload(ctx); err != nil {
		return nil, err
	}
	// Re-key failures of a rotation in progress are counted from here.
	if err := a.cfg.Store.View(ctx, func(tx *store.Tx) error { a.rot.auditSeq = tx.LastSeq(); return nil }); err != nil {
		return nil, err
	}
	return a, nil
}

// deny audits a refusal.
func (a *Authority) deny(ctx context.Context, ev store.Event) {
	if a.cfg.Denials != nil {
		a.cfg.Denials.Deny(ctx, ev)
		return
	}
	if ev.Outcome == "" {
		ev.Outcome = store.OutcomeDenied
	}
	if _, err := a.cfg.Store.Append(context.WithoutCancel(ctx), ev); err != nil {
		a.log.Error("audit record not written", "action", ev.Action, "err", err)
	}
}

func (a *Authority) newCA(m *ca.Material) (*ca.CA, error) {
	c, err := ca.New(ca.Config{
		TrustDomain:  a.cfg.TrustDomain,
		Material:     m,
		KeyAlgorithm: a.cfg.KeyAlgorithm,
		Backdate:     a.cfg.Lifetimes.Backdate,
		Clock:        a.cfg.Clock,
		Logger:       a.log,

		LintBeforeSigning: a.cfg.LintBeforeSigning,
	})
	if err != nil {
		return nil, fmt.Errorf("authority: %w", err)
	}
	return c, nil
}

// CA returns the CA in use.
func (a *Authority) CA() *ca.CA { return a.ca.Load() }

// BundlePEM is the trust bundle of the CA in use: its roots.
func (a *Authority) BundlePEM() []byte { return a.CA().BundlePEM() }

// Issue signs req with the CA in use and names that CA by its serial.
func (a *Authority) Issue(ctx context.Context, req ca.Request) (*ca.Issued, string, error) {
	c := a.CA()
	issued, err := c.Issue(ctx, req)
	if err != nil {
		return nil, "", err
	}
	return issued, serialHex(c.Issuer()), nil
}

func (a *Authority) initCA(ctx context.Context) (*ca.Material, error) {
	m, err := ca.Generate(ca.GenerateOptions{
		TrustDomain:     a.cfg.TrustDomain,
		KeyAlgorithm:    a.cfg.KeyAlgorithm,
		RootTTL:         a.cfg.Lifetimes.Root,
		IntermediateTTL: a.cfg.Lifetimes.Intermediate,
		Backdate:        a.cfg.Lifetimes.Backdate,
		Now:             a.cfg.Clock.Now(),
	})
	if err != nil {
		return nil, fmt.Errorf("authority: generate CA: %w", err)
	}
	if err := a.saveCA(ctx, m, store.SourceGenerated, ActionCAInit, "meshca"); err != nil {
		return nil, err
	}
	a.log.Info("generated CA", "root_serial", serialHex(m.Roots[0]), "intermediate_serial", serialHex(m.Issuer), "not_after", m.Issuer.NotAfter)
	return m, nil
}

func (a *Authority) saveCA(ctx context.Context, m *ca.Material, source, action, actor string) error {
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
	return a.cfg.Store.Update(ctx, func(tx *store.Tx) error {
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
			return store.CA{}, fmt.Errorf("authority: marshal CA key: %w", err)
		}
		rec.Key = der
	}
	return rec, nil
}

// loadCA reads the CA material the CA set names.
func (a *Authority) loadCA(ctx context.Context) (*ca.Material, error) {
	m, _, err := a.loadSet(ctx)
	return m, err
}

// loadSet reads the CA set and the material it names in one View.
func (a *Authority) loadSet(ctx context.Context) (*ca.Material, store.CASet, error) {
	m := &ca.Material{}
	var set store.CASet
	err := a.cfg.Store.View(ctx, func(tx *store.Tx) error {
		var err error
		m = &ca.Material{}
		if set, err = tx.CASet(); err != nil {
			return err
		}
		issuer, err := tx.CA(set.IssuerSerial)
		if err != nil {
			return fmt.Errorf("authority: issuer %s: %w", set.IssuerSerial, err)
		}
		if m.Issuer, m.IssuerKey, err = parseCA(issuer); err != nil {
			return err
		}
		if m.IssuerKey == nil {
			return fmt.Errorf("authority: issuer %s has no key in the store", set.IssuerSerial)
		}
		for _, s := range set.ChainSerials {
			rec, err := tx.CA(s)
			if err != nil {
				return fmt.Errorf("authority: chain %s: %w", s, err)
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
				return fmt.Errorf("authority: root %s: %w", s, err)
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
		return nil, store.CASet{}, err
	}
	return m, set, nil
}

func parseCA(rec store.CA) (*x509.Certificate, crypto.Signer, error) {
	c, err := x509.ParseCertificate(rec.DER)
	if err != nil {
		return nil, nil, fmt.Errorf("authority: CA %s: %w", rec.Serial, err)
	}
	if rec.Key == nil {
		return c, nil, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(rec.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("authority: CA %s: key does not parse", rec.Serial)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, nil, fmt.Errorf("authority: CA %s: key %T cannot sign", rec.Serial, k)
	}
	return c, s, nil
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}

func serialHex(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }

// nodeSubject is how the store names a node's certificates.
func nodeSubject(node string) string { return "node/" + node }

// ImportCA makes an operator's CA the issuer, so that meshca chains under the
// organisation's root. It is refused once any certificate has been issued:
// switching a live mesh to another CA is a rotation, not an import.
func (a *Authority) ImportCA(ctx context.Context, certPEM, keyPEM []byte, actor string) error {
	m, err := ca.ParseImport(certPEM, keyPEM, a.cfg.Clock.Now())
	if err != nil {
		a.deny(ctx, store.Event{Action: ActionCAImport, Actor: actor, Detail: err.Error()})
		return err
	}
	if n, err := a.issuedCount(ctx); err != nil {
		return err
	} else if n > 0 {
		err := fmt.Errorf("%w (%d identities hold certificates); import a CA before adding identities", ErrCAInUse, n)
		a.deny(ctx, store.Event{Action: ActionCAImport, Actor: actor, Detail: err.Error()})
		return err
	}
	if err := a.saveCA(ctx, m, store.SourceImported, ActionCAImport, actor); err != nil {
		return err
	}
	if err := a.reload(ctx); err != nil {
		return err
	}
	a.log.Info("imported CA", "issuer_serial", serialHex(m.Issuer), "not_after", m.Issuer.NotAfter)
	return nil
}

func (a *Authority) issuedCount(ctx context.Context) (int, error) {
	n := 0
	err := a.cfg.Store.View(ctx, func(tx *store.Tx) error {
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
