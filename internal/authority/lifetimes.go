package authority

import (
	"errors"
	"fmt"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/rotation"
)

// Range is an inclusive range of lifetimes; Max 0 means no upper bound.
type Range struct{ Min, Max time.Duration }

// The lifetimes an operator may choose. Check is the one test of a TTL:
// the configuration, the admin API, the CLI and the registry all refuse
// with its message.
var (
	// LeafTTL bounds every leaf certificate: identities, nodes and
	// meshca's own server certificate.
	LeafTTL = Range{Min: 5 * time.Minute, Max: 30 * 24 * time.Hour}
	// JoinTokenTTL bounds how long a node's one-time join token is valid.
	JoinTokenTTL = Range{Min: time.Minute, Max: 30 * 24 * time.Hour}
	// RootTTL and IntermediateTTL bound generated CA certificates; the
	// intermediate must also be shorter than the root.
	RootTTL         = Range{Min: 24 * time.Hour}
	IntermediateTTL = Range{Min: time.Hour}
)

// Renewal bounds: Fraction is the share of a leaf's lifetime after which it
// is renewed, Jitter moves each renewal earlier by up to that share of the
// lifetime, and is less than the fraction.
const (
	MinRenewFraction = 0.1
	MaxRenewFraction = 0.9
)

// Check reports whether d lies in r. The error says what was wrong and
// what is allowed; callers add what the lifetime is of (a configuration
// key, ca.ErrTTL).
func (r Range) Check(d time.Duration) error {
	switch {
	case r.Max == 0 && d < r.Min:
		return fmt.Errorf("%s is too short: at least %s", d, r.Min)
	case r.Max != 0 && (d < r.Min || d > r.Max):
		return fmt.Errorf("%s is out of range %s to %s", d, r.Min, r.Max)
	}
	return nil
}

// CheckLeafTTL is LeafTTL.Check with an error that wraps ca.ErrTTL: the
// check of a certificate lifetime asked for through the API, the CLI or
// the registry.
func CheckLeafTTL(d time.Duration) error {
	if err := LeafTTL.Check(d); err != nil {
		return fmt.Errorf("%w: %w", ca.ErrTTL, err)
	}
	return nil
}

// Lifetimes are the lifetime rules of every credential meshca makes. The
// zero value is not usable: start from Default and check with Validate.
type Lifetimes struct {
	// Leaf is the lifetime of an identity's certificate when none is
	// asked for (ca.default_leaf_ttl).
	Leaf time.Duration
	// Node is the lifetime of a node's certificate (xds.node_cert_ttl).
	Node time.Duration
	// Server is the lifetime of meshca's own TLS server certificate, for
	// xDS and the mTLS admin API. It is renewed at ServerRenewFraction,
	// without jitter: there is one.
	Server              time.Duration
	ServerRenewFraction float64
	// JoinToken is how long a node's one-time join token is valid
	// (xds.join_token_ttl).
	JoinToken time.Duration
	// Root and Intermediate are the lifetimes of a CA meshca generates
	// (ca.root_ttl, ca.intermediate_ttl). An intermediate never outlives
	// its root.
	Root, Intermediate time.Duration
	// AutoRotate is the share of the issuing intermediate's lifetime after
	// which meshca starts rotating it on its own.
	AutoRotate float64
	// Backdate moves a leaf's NotBefore this far before now, for peers
	// whose clocks run behind.
	Backdate time.Duration
	// RenewFraction and RenewJitter say when a leaf is renewed
	// (rotation.fraction, rotation.jitter): see Renewal. RenewJitter 0
	// means none.
	RenewFraction, RenewJitter float64
}

// Default returns meshca's defaults: the embedded configuration's values
// and the rules an operator cannot change.
func Default() Lifetimes {
	return Lifetimes{
		Leaf:                time.Hour,
		Node:                24 * time.Hour,
		Server:              24 * time.Hour,
		ServerRenewFraction: 0.5,
		JoinToken:           time.Hour,
		Root:                10 * 365 * 24 * time.Hour,
		Intermediate:        365 * 24 * time.Hour,
		AutoRotate:          0.8,
		Backdate:            time.Minute,
		RenewFraction:       0.5,
		RenewJitter:         0.1,
	}
}

// OrDefault returns l, or Default when l is the zero value.
func (l Lifetimes) OrDefault() Lifetimes {
	if l == (Lifetimes{}) {
		return Default()
	}
	return l
}

// Validate checks every rule and returns all problems at once, each naming
// its field.
func (l Lifetimes) Validate() error {
	var errs []error
	check := func(field string, err error) {
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", field, err))
		}
	}
	check("Leaf", CheckLeafTTL(l.Leaf))
	check("Node", CheckLeafTTL(l.Node))
	check("Server", CheckLeafTTL(l.Server))
	check("JoinToken", JoinTokenTTL.Check(l.JoinToken))
	check("Root", RootTTL.Check(l.Root))
	check("Intermediate", l.CheckIntermediate())
	check("RenewFraction", CheckRenewFraction(l.RenewFraction))
	check("RenewJitter", CheckRenewJitter(l.RenewJitter, l.RenewFraction))
	check("ServerRenewFraction", CheckRenewFraction(l.ServerRenewFraction))
	if l.AutoRotate <= 0 || l.AutoRotate >= 1 {
		check("AutoRotate", fmt.Errorf("%v is out of range: above 0 and below 1 of the lifetime", l.AutoRotate))
	}
	if l.Backdate < 0 || l.Backdate >= LeafTTL.Min {
		check("Backdate", fmt.Errorf("%s is out of range: 0 up to %s", l.Backdate, LeafTTL.Min))
	}
	return errors.Join(errs...)
}

// CheckIntermediate checks the intermediate's lifetime against its range
// and the root's lifetime.
func (l Lifetimes) CheckIntermediate() error {
	if err := IntermediateTTL.Check(l.Intermediate); err != nil {
		return err
	}
	if l.Intermediate >= l.Root {
		return fmt.Errorf("%s must be shorter than the root's %s", l.Intermediate, l.Root)
	}
	return nil
}

// CheckRenewFraction checks a renewal fraction.
func CheckRenewFraction(f float64) error {
	if f < MinRenewFraction || f > MaxRenewFraction {
		return fmt.Errorf("%v is out of range: %v to %v of the lifetime", f, MinRenewFraction, MaxRenewFraction)
	}
	return nil
}

// CheckRenewJitter checks a jitter against the fraction it moves.
func CheckRenewJitter(j, fraction float64) error {
	if j < 0 || j >= fraction {
		return fmt.Errorf("%v is out of range: 0 up to the renewal fraction (%v)", j, fraction)
	}
	return nil
}

// Window is the validity of a leaf of lifetime ttl issued at now by an
// issuer valid until issuerNotAfter: NotBefore is now less Backdate, to
// the second; NotAfter is NotBefore plus ttl, never after the issuer's.
// ca.CA.Issue signs exactly this window when given Backdate.
func (l Lifetimes) Window(now time.Time, ttl time.Duration, issuerNotAfter time.Time) (notBefore, notAfter time.Time) {
	notBefore = now.Add(-l.Backdate).Truncate(time.Second).UTC()
	notAfter = notBefore.Add(ttl)
	if notAfter.After(issuerNotAfter) {
		notAfter = issuerNotAfter.UTC()
	}
	return notBefore, notAfter
}

// Renewal is the renewal policy of leaves: after RenewFraction of the
// lifetime, moved earlier by up to RenewJitter of it per certificate.
func (l Lifetimes) Renewal() rotation.Policy {
	return rotation.Policy{Fraction: l.RenewFraction, Jitter: l.RenewJitter}
}

// ServerRenewDue reports whether meshca's server certificate, valid from
// notBefore to notAfter, is due for renewal at now.
func (l Lifetimes) ServerRenewDue(now, notBefore, notAfter time.Time) bool {
	return rotation.Due(now, notBefore, notAfter, l.ServerRenewFraction)
}

// AutoRotateAt is when meshca starts rotating an issuing intermediate
// valid from notBefore to notAfter.
func (l Lifetimes) AutoRotateAt(notBefore, notAfter time.Time) time.Time {
	return notBefore.Add(time.Duration(float64(notAfter.Sub(notBefore)) * l.AutoRotate))
}
