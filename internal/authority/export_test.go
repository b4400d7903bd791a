package authority

import (
	"crypto"
	"crypto/x509"
	"math/big"
	"time"

	"github.com/meshca/meshca/ca"
)

// What the black-box tests need of the inside.
const (
	PublishGrace = publishGrace
	AckWait      = ackWait
	RotationTick = rotationTick
	CRLRefresh   = crlRefresh
)

// SetSignCRL replaces ca.SignCRL, to count or fail signatures.
func SetSignCRL(a *Authority, f func(*x509.Certificate, crypto.Signer, []ca.Revoked, *big.Int, time.Time, time.Time) ([]byte, error)) {
	a.crlMu.Lock()
	a.signCRL = f
	a.crlMu.Unlock()
}

// CRLStale reports whether a committed revocation's CRL was not stored.
func CRLStale(a *Authority) bool { return a.crlStale.Load() }
