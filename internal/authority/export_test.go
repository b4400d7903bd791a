package authority

import (
	"crypto"
	"crypto/x509"
	"math/big"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/store"
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

// CountLeafReads calls seen with the identity of every leaf a rotation's
// count reads from the store.
func CountLeafReads(a *Authority, seen func(identity string)) {
	x := &a.rot.leafIndex
	x.mu.Lock()
	defer x.mu.Unlock()
	x.read = func(tx *store.Tx, id store.Identity) (leaf, bool, error) {
		seen(id.Name)
		return readLeaf(tx, id)
	}
}

// CountAgentCertReads calls seen with every agent node whose certificates
// a rotation's count reads from the store, and the identity when it reads
// only that identity's ("" when it reads them all).
func CountAgentCertReads(a *Authority, seen func(node, identity string)) {
	x := &a.rot.agentCerts
	x.mu.Lock()
	defer x.mu.Unlock()
	x.read = func(tx *store.Tx, n store.Node, ident string) ([]agentCert, error) {
		seen(n.Name, ident)
		return readAgentCerts(tx, n, ident)
	}
}
