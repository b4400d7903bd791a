// Package rotation decides when a certificate is renewed. Decisions are pure
// functions of the certificate's validity window and the current time, so
// they are tested exactly, without clocks or sleeps; the caller supplies
// "now" from its injected clock.
package rotation

import "time"

// DefaultFraction renews a certificate at half its lifetime.
const DefaultFraction = 0.5

// RenewAt is the moment a certificate valid from notBefore to notAfter
// should be renewed: after fraction of its lifetime has passed. A fraction
// outside (0, 1) is treated as DefaultFraction.
func RenewAt(notBefore, notAfter time.Time, fraction float64) time.Time {
	if fraction <= 0 || fraction >= 1 {
		fraction = DefaultFraction
	}
	life := notAfter.Sub(notBefore)
	return notBefore.Add(time.Duration(float64(life) * fraction))
}

// Due reports whether a certificate should be renewed at now.
func Due(now, notBefore, notAfter time.Time, fraction float64) bool {
	return !now.Before(RenewAt(notBefore, notAfter, fraction))
}
