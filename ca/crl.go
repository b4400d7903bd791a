package ca

import (
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// Revoked is one entry of a CRL.
type Revoked struct {
	Serial    string // lowercase hex, as in Issued.Serial
	RevokedAt time.Time
	// ReasonCode is the RFC 5280 CRLReason (ReasonCode gives it for an
	// operator's text); 0, unspecified, leaves the extension out.
	ReasonCode int
}

// RFC 5280 CRLReason values meshca can record (certificateHold is left
// out: meshca never takes a revocation back).
var reasonCodes = []struct {
	name string // as RFC 5280 spells it, lowercase, without separators
	code int
}{
	{"keycompromise", 1},
	{"cacompromise", 2},
	{"affiliationchanged", 3},
	{"superseded", 4},
	{"cessationofoperation", 5},
	{"privilegewithdrawn", 9},
}

// ReasonCode reads the CRLReason in the first words of an operator's
// free-text reason ("key compromise: laptop lost", "keyCompromise",
// "superseded by web-2"), ignoring case and separators. Anything else is 0
// (unspecified).
func ReasonCode(text string) int {
	words := strings.FieldsFunc(strings.ToLower(text), func(r rune) bool { return r < 'a' || r > 'z' })
	for _, rc := range reasonCodes {
		joined := ""
		for _, w := range words[:min(len(words), 3)] {
			joined += w
			if joined == rc.name {
				return rc.code
			}
		}
	}
	return 0
}

// CRL signs a CRL of the issuer over the revoked serials, built with
// crypto/x509 (cfssl's helper uses the deprecated API and writes no CRL
// number). number must grow with every CRL the issuer publishes. The result
// is PEM ("X509 CRL").
func (c *CA) CRL(revoked []Revoked, number *big.Int, thisUpdate, nextUpdate time.Time) ([]byte, error) {
	return SignCRL(c.material.Issuer, c.material.IssuerKey, revoked, number, thisUpdate, nextUpdate)
}

// SignCRL is CRL for any issuer whose key meshca holds, such as the
// previous intermediate during a CA rotation.
func SignCRL(issuer *x509.Certificate, key crypto.Signer, revoked []Revoked, number *big.Int, thisUpdate, nextUpdate time.Time) ([]byte, error) {
	if number == nil || number.Sign() <= 0 {
		return nil, fmt.Errorf("%w: CRL number must be positive", ErrInvalidRequest)
	}
	if !nextUpdate.After(thisUpdate) {
		return nil, fmt.Errorf("%w: CRL nextUpdate must follow thisUpdate", ErrInvalidRequest)
	}
	if issuer.KeyUsage&x509.KeyUsageCRLSign == 0 {
		return nil, fmt.Errorf("%w: issuer %q may not sign CRLs (no cRLSign key usage)", ErrNotCA, issuer.Subject.String())
	}
	entries := make([]x509.RevocationListEntry, 0, len(revoked))
	for _, r := range revoked {
		sn, ok := new(big.Int).SetString(r.Serial, 16)
		if !ok || sn.Sign() <= 0 {
			return nil, fmt.Errorf("%w: revoked serial %q is not hex", ErrInvalidRequest, clip(r.Serial))
		}
		entries = append(entries, x509.RevocationListEntry{SerialNumber: sn, RevocationTime: r.RevokedAt.UTC(), ReasonCode: r.ReasonCode})
	}
	der, err := x509.CreateRevocationList(rand.Reader, &x509.RevocationList{
		RevokedCertificateEntries: entries,
		Number:                    number,
		ThisUpdate:                thisUpdate.UTC(),
		NextUpdate:                nextUpdate.UTC(),
	}, issuer, key)
	if err != nil {
		return nil, fmt.Errorf("sign CRL: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "X509 CRL", Bytes: der}), nil
}
