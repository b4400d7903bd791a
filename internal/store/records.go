package store

import "time"

// Identity is a registered service identity.
type Identity struct {
	Name     string        `json:"name"`
	SPIFFEID string        `json:"spiffe_id"`
	DNSNames []string      `json:"dns_names,omitempty"`
	TTL      time.Duration `json:"ttl"`
	// Admin marks identities whose certificates may call the admin API over
	// mTLS.
	Admin         bool      `json:"admin,omitempty"`
	State         string    `json:"state"` // StateActive or StateRevoked
	CurrentSerial string    `json:"current_serial,omitempty"`
	CreatedAt     time.Time `json:"created_at"`
	UpdatedAt     time.Time `json:"updated_at"`
}

// Identity and node states.
const (
	StateActive  = "active"
	StateRevoked = "revoked"
)

// Cert is an issued certificate, never its private key: the key is
// written with Tx.PutCert and read back only as part of a Credential
// (Tx.Credential), so a Cert can be listed, logged or shown as it is.
type Cert struct {
	Serial       string    `json:"serial"` // lowercase hex, no separators
	Identity     string    `json:"identity"`
	DER          []byte    `json:"der"`
	Chain        [][]byte  `json:"chain,omitempty"` // intermediates, issuer first; no root
	IssuerSerial string    `json:"issuer_serial"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	IssuedAt     time.Time `json:"issued_at"`
	// Node is the agent node a certificate was signed for from its CSR:
	// each agent node holding an identity has its own certificate (see
	// HolderCert). Empty for an identity's shared certificate.
	Node string `json:"node,omitempty"`
	// KeyHeld is set on read when meshca generated and holds the key (a
	// sealed key is stored). Admin credentials must never be such
	// certificates.
	KeyHeld bool `json:"-"`
}

// Credential is a certificate with the private key meshca generated for
// it: what a node's proxies receive. Key is PKCS#8 in the clear in memory;
// the store seals it (identity and serial as associated data) and never
// writes it in the clear. Only Tx.Credential returns one.
type Credential struct {
	Cert
	Key []byte
}

// CA is one CA certificate and, when meshca holds it, its PKCS#8 key (clear in
// memory, sealed at rest with "ca" and the serial as associated data).
type CA struct {
	Serial    string    `json:"serial"`
	Role      string    `json:"role"`   // RoleRoot or RoleIntermediate
	Source    string    `json:"source"` // SourceGenerated or SourceImported
	DER       []byte    `json:"der"`
	Key       []byte    `json:"-"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	CreatedAt time.Time `json:"created_at"`
}

// CA roles and sources.
const (
	RoleRoot         = "root"
	RoleIntermediate = "intermediate"
	SourceGenerated  = "generated"
	SourceImported   = "imported"
)

// CASet is the CA in use: the issuer that signs leaves, the certificates
// between it and a root, and the roots that make up the trust bundle.
type CASet struct {
	IssuerSerial string   `json:"issuer_serial"`
	ChainSerials []string `json:"chain_serials,omitempty"` // above the issuer, nearest first; no root
	RootSerials  []string `json:"root_serials"`
	// Rotation is the CA rotation in progress, if any.
	Rotation *CARotation `json:"rotation,omitempty"`
}

// CARotation is the state of a CA rotation.
type CARotation struct {
	Kind  string `json:"kind"`  // RotationIntermediate or RotationRoot
	Phase string `json:"phase"` // PhasePublishing or PhaseReissuing
	// NextIssuer becomes the issuer when publishing ends; NextRoot is the
	// root published beside the old one (root rotation only).
	NextIssuer string `json:"next_issuer,omitempty"`
	NextRoot   string `json:"next_root,omitempty"`
	// PreviousIssuer is the issuer being replaced; PreviousRoot the root
	// that leaves the bundle when the rotation ends (root rotation only).
	PreviousIssuer string    `json:"previous_issuer"`
	PreviousRoot   string    `json:"previous_root,omitempty"`
	StartedAt      time.Time `json:"started_at"`
	PhaseSince     time.Time `json:"phase_since"`
	// Emergency marks a rotation that replaced a CA whose keys may be
	// compromised: the certificates of the Compromised issuers are revoked
	// and the RetireRoots leave the bundle as soon as every leaf is
	// re-issued, without waiting for nodes.
	Emergency   bool     `json:"emergency,omitempty"`
	Compromised []string `json:"compromised,omitempty"`
	RetireRoots []string `json:"retire_roots,omitempty"`
}

// CA rotation kinds and phases.
const (
	RotationIntermediate = "intermediate"
	RotationRoot         = "root"
	PhasePublishing      = "publishing" // bundle holds old and new roots; waiting for nodes to acknowledge
	PhaseReissuing       = "reissuing"  // issuing from the new CA; old one trusted until every leaf is re-issued
)

// Node is a proxy registered to receive configuration and secrets.
type Node struct {
	Name       string   `json:"name"`
	Kind       string   `json:"kind"`
	Identities []string `json:"identities,omitempty"`
	// JoinedAt is when the node first redeemed a join token; a new token
	// (to bootstrap again) leaves it set. The token itself is a JoinToken
	// record of its own.
	JoinedAt  time.Time `json:"joined_at,omitempty"`
	State     string    `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	UpdatedAt time.Time `json:"updated_at"`
	// CertSerial is the node certificate in use: the one issued at the last
	// join, or a renewed one after its first use. NextSerial is a renewed
	// certificate not used yet. Any other node certificate is refused (and
	// revoked). Both empty for nodes recorded before these fields existed.
	CertSerial string `json:"cert_serial,omitempty"`
	NextSerial string `json:"next_serial,omitempty"`
	// NewestIssuer and NewestNotAfter describe the node's newest node
	// certificate (NextSerial's when set, else CertSerial's), so that a CA
	// rotation can count the nodes still on the previous CA from node
	// records alone. Empty for certificates recorded before they existed.
	NewestIssuer   string    `json:"newest_issuer,omitempty"`
	NewestNotAfter time.Time `json:"newest_not_after,omitempty"`
	// RenewWindowStart and Renewals count the node's renewals in the
	// current rate-limit window, kept here so that the limit holds across
	// restarts and replicas.
	RenewWindowStart time.Time `json:"renew_window_start,omitempty"`
	Renewals         int       `json:"renewals,omitempty"`
	// Agent marks a node whose agent makes its identities' keys and sends
	// CSRs: meshca never generates, stores or sends a key for it. Its CSR
	// count is a SignCount record, so that counting does not rewrite (and
	// push) the node.
	Agent bool `json:"agent,omitempty"`
	// Selectors name, per identity of an agent node, the local processes
	// its agent may serve the identity to (uid:N, gid:N, path:/abs; all
	// must match). An identity without an entry serves any local caller,
	// which is also how a record written before this field reads, so the
	// field needed no schema change. A meshca built before it would drop
	// the selectors when it rewrote the node (widening the assignment):
	// do not go back to one on a store where selectors were set.
	Selectors map[string][]string `json:"selectors,omitempty"`
}

// Revocation records a revoked certificate serial.
type Revocation struct {
	Serial       string    `json:"serial"`
	Identity     string    `json:"identity"` // identity name, or node/NAME
	IssuerSerial string    `json:"issuer_serial"`
	Reason       string    `json:"reason,omitempty"`
	NotAfter     time.Time `json:"not_after"`
	RevokedAt    time.Time `json:"revoked_at"`
}

// Mesh is one version of the declarative mesh document.
type Mesh struct {
	Version   uint64    `json:"version"`
	Document  []byte    `json:"document"`
	AppliedBy string    `json:"applied_by,omitempty"`
	AppliedAt time.Time `json:"applied_at"`
}

// Event is one audit record. Seq is assigned by the store: 1, 2, 3... with no
// gaps, in commit order.
type Event struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Action   string    `json:"action"`
	Actor    string    `json:"actor,omitempty"`
	Identity string    `json:"identity,omitempty"`
	Node     string    `json:"node,omitempty"`
	Serial   string    `json:"serial,omitempty"`
	Outcome  string    `json:"outcome"` // OutcomeOK, OutcomeDenied or OutcomeFailed
	Detail   string    `json:"detail,omitempty"`
}

// Audit outcomes.
const (
	OutcomeOK     = "ok"
	OutcomeDenied = "denied"
	OutcomeFailed = "failed"
)
