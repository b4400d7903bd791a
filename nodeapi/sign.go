package nodeapi

import "time"

// SignRequest asks for a certificate of one identity held by the calling
// agent node, for the key of CSR. The caller authenticates with its node
// certificate. Only the CSR's public key is used: meshca sets the subject,
// SANs and validity from the identity. No private key ever travels.
type SignRequest struct {
	Identity string `json:"identity"`
	CSR      []byte `json:"csr"` // DER PKCS#10 (base64 in JSON)
}

// SignResponse is the node's own certificate for the identity.
type SignResponse struct {
	Identity  string    `json:"identity"`
	ChainPEM  string    `json:"chain_pem"`  // certificate and intermediates
	BundlePEM string    `json:"bundle_pem"` // the trust bundle
	Serial    string    `json:"serial"`
	NotAfter  time.Time `json:"not_after"`
}

// IdentitiesMethod names the identities an agent node holds now, so that
// its agent knows which keys to make. Like SignCSR it is served only on the
// node's authenticated connection.
const IdentitiesMethod = "Identities"

// FullIdentitiesMethod is the gRPC path of Identities.
const FullIdentitiesMethod = "/" + Service + "/" + IdentitiesMethod

// IdentitiesRequest asks for the calling agent node's identities; the
// answer is an IdentitiesResponse (identities.go).
type IdentitiesRequest struct{}
