// Package rotation decides when certificates are renewed and runs the
// renewal loop. Decisions are pure functions of the certificate's validity
// window, the policy and the current time, so they are tested exactly; the
// loop reads time only from an injected clock.
package rotation

import (
	"crypto/sha256"
	"encoding/binary"
	"time"
)

// The zero Policy's values, for callers without a configuration (the
// CLI renewing its own certificate). meshca's server passes its
// configured policy, decided with every other lifetime rule in
// internal/authority.
const (
	DefaultFraction = 0.5
	DefaultJitter   = 0.1
)

// Policy says when in its lifetime a certificate is renewed: after
// Fraction of it has passed, moved earlier by up to Jitter of it. The
// zero Policy is DefaultFraction with DefaultJitter; in any other Policy
// Jitter is taken as given (0 or negative: none). The jitter
// of each certificate is derived from its serial, so renewals of many
// certificates issued together spread out, and the point does not move
// across restarts.
type Policy struct {
	Fraction float64 // in (0, 1); out of it: DefaultFraction
	Jitter   float64 // in [0, Fraction); at or above it: Fraction/2
}

func (p Policy) normalized() Policy {
	if p == (Policy{}) {
		return Policy{Fraction: DefaultFraction, Jitter: DefaultJitter}
	}
	if p.Fraction <= 0 || p.Fraction >= 1 {
		p.Fraction = DefaultFraction
	}
	p.Jitter = max(p.Jitter, 0)
	if p.Jitter >= p.Fraction {
		p.Jitter = p.Fraction / 2
	}
	return p
}

// RenewAt is when a certificate valid from notBefore to notAfter, with the
// given serial, should be renewed. It lies in
// [notBefore + (Fraction-Jitter)·life, notBefore + Fraction·life].
func (p Policy) RenewAt(notBefore, notAfter time.Time, serial string) time.Time {
	p = p.normalized()
	life := float64(notAfter.Sub(notBefore))
	return notBefore.Add(time.Duration(life * (p.Fraction - p.Jitter*unit(serial))))
}

// Due reports whether the certificate should be renewed at now.
func (p Policy) Due(now, notBefore, notAfter time.Time, serial string) bool {
	return !now.Before(p.RenewAt(notBefore, notAfter, serial))
}

// unit maps a serial to [0, 1), uniformly.
func unit(serial string) float64 {
	h := sha256.Sum256([]byte(serial))
	return float64(binary.BigEndian.Uint64(h[:8])>>11) / (1 << 53)
}

// RenewAt is Policy{Fraction: fraction, Jitter: 0}: a fixed point, for a
// single certificate such as meshca's own server certificate.
func RenewAt(notBefore, notAfter time.Time, fraction float64) time.Time {
	if fraction <= 0 || fraction >= 1 {
		fraction = DefaultFraction
	}
	return notBefore.Add(time.Duration(float64(notAfter.Sub(notBefore)) * fraction))
}

// Due reports whether a certificate should be renewed at now, at a fixed
// fraction of its lifetime.
func Due(now, notBefore, notAfter time.Time, fraction float64) bool {
	return !now.Before(RenewAt(notBefore, notAfter, fraction))
}

// Backoff is the wait before retry number attempt (1, 2, ...) of a failed
// renewal: doubling from Min, capped at Max and at a tenth of the time left
// before notAfter, so that a certificate gets many tries before it expires.
type Backoff struct {
	Min, Max time.Duration // defaults 1s and 5m
}

// Next returns the wait before the given attempt.
func (b Backoff) Next(attempt int, now, notAfter time.Time) time.Duration {
	if b.Min <= 0 {
		b.Min = time.Second
	}
	if b.Max <= 0 {
		b.Max = 5 * time.Minute
	}
	d := b.Min
	for i := 1; i < attempt && d < b.Max; i++ {
		d *= 2
	}
	d = min(d, b.Max, max(notAfter.Sub(now)/10, b.Min))
	return max(d, b.Min)
}

// Alarming reports whether a certificate whose renewal keeps failing needs
// an operator: less than a quarter of its lifetime is left.
func Alarming(now, notBefore, notAfter time.Time) bool {
	return notAfter.Sub(now) < notAfter.Sub(notBefore)/4
}
