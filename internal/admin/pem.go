package admin

import (
	"encoding/pem"

	"github.com/meshca/meshca/internal/store"
)

// chainPEM is the leaf and its intermediates as PEM; never the key.
func chainPEM(c *store.Cert) []byte {
	out := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.DER})
	for _, der := range c.Chain {
		out = append(out, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	return out
}
