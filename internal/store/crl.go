package store

import "time"

// bucketCRL holds the signed CRL in use under crlKey: one record, replaced
// by each CRL signed after it.
var (
	bucketCRL = []byte("crl")
	crlKey    = []byte("current")
)

// CRL is the certificate revocation list in use, as meshca signed it: one
// PEM CRL for each issuer whose leaves may be in use, concatenated. PEM is
// nil when no unexpired certificate is revoked (nothing is served then).
type CRL struct {
	// Number is the CRL number of every CRL in PEM; it only grows.
	Number  uint64   `json:"number"`
	PEM     []byte   `json:"pem,omitempty"`
	Issuers []string `json:"issuers,omitempty"`
	Entries int      `json:"entries"`
	// Covers sums up what the CRL lists (the revoked serials and the
	// issuers it was signed for), so that a signer can tell that nothing
	// changed since it was signed.
	Covers     string    `json:"covers,omitempty"`
	ThisUpdate time.Time `json:"this_update"`
	NextUpdate time.Time `json:"next_update,omitempty"`
}

// PutCRL makes c the CRL in use.
func (tx *Tx) PutCRL(c CRL) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := tx.put(bucketCRL, crlKey, c); err != nil {
		return err
	}
	tx.tracked(KindCRL, "", "")
	return nil
}

// CRL returns the CRL in use, or ErrNotFound before the first PutCRL.
func (tx *Tx) CRL() (CRL, error) {
	var c CRL
	err := tx.get(bucketCRL, crlKey, &c)
	return c, err
}
