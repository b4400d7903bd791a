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
	// IssuerSerial is the serial of the CA that signed the certificate;
	// only when the request carried IssuerHeader.
	IssuerSerial string `json:"issuer_serial,omitempty"`
}

// IssuerHeader is the request metadata key (value "1") by which an agent
// asks SignCSR and Identities to name the issuing CA (IssuerSerial). After
// a CA rotation switches issuance, an agent re-keys every identity whose
// certificate names another issuer, so that the previous CA can retire
// without waiting for the agent's next half-life renewal. A server answers
// with the field only when asked, because a client that predates it refuses
// unknown fields; a server that predates it ignores the header.
const IssuerHeader = "meshca-issuer"

// IdentitiesMethod names the identities an agent node holds now, so that
// its agent knows which keys to make. Like SignCSR it is served only on the
// node's authenticated connection.
const IdentitiesMethod = "Identities"

// FullIdentitiesMethod is the gRPC path of Identities.
const FullIdentitiesMethod = "/" + Service + "/" + IdentitiesMethod

// IdentitiesRequest asks for the calling agent node's identities; the
// answer is an IdentitiesResponse (identities.go).
type IdentitiesRequest struct{}
