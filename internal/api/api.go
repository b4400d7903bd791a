// Package api defines the admin API's JSON messages. The server
// (internal/admin) and the CLI (internal/cli) share these types and nothing
// else.
package api

import "time"

// Paths of the admin API.
const (
	PathIdentities = "/v1/identities"
	PathCerts      = "/v1/certs"
	PathCA         = "/v1/ca"
	PathCABundle   = "/v1/ca/bundle"
	PathCAPin      = "/v1/ca/pin" // PEM of the CAs that may sign meshca's server certificate
	PathCAImport   = "/v1/ca/import"
	PathCARotate   = "/v1/ca/rotate"
	PathAudit      = "/v1/audit"
	PathNodes      = "/v1/nodes"
	PathReissue    = "/v1/reissue"
	PathRevoke     = "/v1/revoke"
	PathCRL        = "/crl"
	PathMesh       = "/v1/mesh"
	PathMeshHist   = "/v1/mesh/history"
	PathMeshRoll   = "/v1/mesh/rollback"
	PathLogs       = "/v1/logs"
	PathReplicas   = "/v1/replicas"
)

// AddIdentityRequest is the body of POST /v1/identities.
type AddIdentityRequest struct {
	Name     string   `json:"name"`
	DNSNames []string `json:"dns_names,omitempty"`
	TTL      string   `json:"ttl,omitempty"` // Go duration; empty means the server default
	Admin    bool     `json:"admin,omitempty"`
}

// Identity describes a registered identity and its current certificate.
type Identity struct {
	Name      string    `json:"name"`
	SPIFFEID  string    `json:"spiffe_id"`
	DNSNames  []string  `json:"dns_names,omitempty"`
	TTL       string    `json:"ttl"`
	Admin     bool      `json:"admin,omitempty"`
	State     string    `json:"state"`
	CreatedAt time.Time `json:"created_at"`
	Cert      *Cert     `json:"cert,omitempty"`
	// Holders are the agent nodes' own certificates for the identity, by
	// node (GET /v1/identities/{name} only).
	Holders []HolderCert `json:"holders,omitempty"`
}

// HolderCert is an agent node's own certificate for an identity, signed
// for a key the node made.
type HolderCert struct {
	Node string `json:"node"`
	Cert Cert   `json:"cert"`
}

// Cert describes an issued certificate. ChainPEM is filled only by
// GET /v1/certs/{name}; private keys are never part of the API.
type Cert struct {
	Serial       string    `json:"serial"`
	IssuerSerial string    `json:"issuer_serial"`
	NotBefore    time.Time `json:"not_before"`
	NotAfter     time.Time `json:"not_after"`
	State        string    `json:"state"` // valid, expired, not-yet-valid, revoked
	// RenewAt is when meshca's renewal loop replaces the certificate; absent
	// when it will not (a revoked identity).
	RenewAt  *time.Time `json:"renew_at,omitempty"`
	ChainPEM string     `json:"chain_pem,omitempty"`
}

// IssueCertRequest is the body of POST /v1/certs/{name}: a certificate for
// the identity is issued to the CSR's public key (nothing else in the CSR is
// used). The answer is a Cert with ChainPEM.
type IssueCertRequest struct {
	CSRPEM string `json:"csr_pem"`
}

// CACert describes one CA certificate.
type CACert struct {
	Subject   string    `json:"subject"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	SHA256    string    `json:"sha256"`
}

// CA is the answer of GET /v1/ca.
type CA struct {
	TrustDomain string      `json:"trust_domain"`
	Issuer      CACert      `json:"issuer"`
	Roots       []CACert    `json:"roots"`
	Rotation    *CARotation `json:"rotation,omitempty"`
	// LastRotation is the last rotation that ended since meshca started.
	LastRotation *CARotationDone `json:"last_rotation,omitempty"`
	// Leader is the replica that runs renewals, CRL re-signing and CA
	// rotations; absent between two terms or when it cannot be read.
	Leader *Leader `json:"leader,omitempty"`
}

// Leader names the replica that leads.
type Leader struct {
	ID      string `json:"id"`
	Address string `json:"address"` // its xDS address
	Self    bool   `json:"self"`    // the replica that answered leads
}

// CARotation is a CA rotation in progress.
type CARotation struct {
	Kind       string    `json:"kind"`  // intermediate or root
	Phase      string    `json:"phase"` // publishing or reissuing
	Emergency  bool      `json:"emergency,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	PhaseSince time.Time `json:"phase_since"`
	// RetireAfter is when the rotation ends at the latest once every leaf
	// is re-issued; in phase publishing, when issuance switches at the
	// latest.
	RetireAfter *time.Time `json:"retire_after,omitempty"`
	WaitingFor  string     `json:"waiting_for,omitempty"`
	// Leaves to re-issue under the new CA, and how far that got.
	Leaves        int `json:"leaves"`
	Reissued      int `json:"reissued"`
	ReissueFailed int `json:"reissue_failed,omitempty"`
	// Connected nodes and those that acknowledged what was last pushed.
	NodesConnected int `json:"nodes_connected"`
	NodesAcked     int `json:"nodes_acked"`
	// OldNodeCerts counts nodes whose node certificate is still from the
	// CA that is leaving (root or intermediate); nodes renew it themselves.
	OldNodeCerts int `json:"old_node_certs,omitempty"`
	// OldAgentCerts counts agent nodes' certificates still from the CA
	// that is leaving, which their agents re-key.
	OldAgentCerts int `json:"old_agent_certs,omitempty"`
	// OwnWorkDone: meshca has nothing left to do; only nodes' renewals of
	// their node certificates are awaited.
	OwnWorkDone bool `json:"own_work_done,omitempty"`
}

// CARotationDone sums up a rotation that ended.
type CARotationDone struct {
	Kind       string    `json:"kind"`
	Emergency  bool      `json:"emergency,omitempty"`
	Aborted    bool      `json:"aborted,omitempty"`
	StartedAt  time.Time `json:"started_at"`
	FinishedAt time.Time `json:"finished_at"`
	Reissued   int       `json:"reissued"`
	Revoked    int       `json:"revoked,omitempty"`
}

// RotateCARequest is the body of POST /v1/ca/rotate. Emergency replaces
// the CA now, superseding a rotation in progress, and revokes the replaced
// issuers' certificates; Abort withdraws a root rotation that has not
// switched issuance yet.
type RotateCARequest struct {
	Root      bool `json:"root,omitempty"`
	Emergency bool `json:"emergency,omitempty"`
	Abort     bool `json:"abort,omitempty"`
}

// ImportCARequest is the body of POST /v1/ca/import.
type ImportCARequest struct {
	CertPEM string `json:"cert_pem"`
	KeyPEM  string `json:"key_pem"`
}

// AuditEvent is one audit record.
type AuditEvent struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Action   string    `json:"action"`
	Actor    string    `json:"actor,omitempty"`
	Identity string    `json:"identity,omitempty"`
	Node     string    `json:"node,omitempty"`
	Serial   string    `json:"serial,omitempty"`
	Outcome  string    `json:"outcome"`
	Detail   string    `json:"detail,omitempty"`
}

// Error is the body of every non-2xx answer.
type Error struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// Problems lists every problem of an invalid mesh file, with its path.
	Problems []string `json:"problems,omitempty"`
}

// Error codes.
const (
	CodeInvalid  = "invalid"
	CodeNotFound = "not_found"
	CodeConflict = "conflict"
	CodeInternal = "internal"
	CodeLint     = "lint_failed"
	CodeDenied   = "denied"
	CodeTooLarge = "too_large"
	CodeExpired  = "issuer_expired"
	// CodeUnavailable: this replica cannot reach the shared store and does
	// not sign; another replica can, or this one once the store is back.
	CodeUnavailable = "unavailable"
)

// AddNodeRequest is the body of POST /v1/nodes.
type AddNodeRequest struct {
	Name       string   `json:"name"`
	Kind       string   `json:"kind,omitempty"` // sidecar (default), front-proxy or grpc
	Identities []string `json:"identities,omitempty"`
	// Agent makes an agent node: its agent makes the identities' keys and
	// sends CSRs; meshca never sends it a private key.
	Agent bool `json:"agent,omitempty"`
	// Selectors restrict each of Identities to the local processes they
	// name (agent nodes only; see AssignRequest).
	Selectors []string `json:"selectors,omitempty"`
}

// AssignRequest is the body of POST /v1/nodes/{name}/identities.
type AssignRequest struct {
	Identity string `json:"identity"`
	// Selectors restrict an agent node's identity to the local processes
	// matching all of them (uid:N, gid:N, path:/abs/path); none: any
	// local caller. They replace the assignment's earlier selectors.
	Selectors []string `json:"selectors,omitempty"`
}

// Node describes a registered node and its connection.
type Node struct {
	Name       string         `json:"name"`
	Kind       string         `json:"kind"`
	Identities []string       `json:"identities"`
	State      string         `json:"state"`
	Agent      bool           `json:"agent,omitempty"`
	Joined     bool           `json:"joined"` // a join token was redeemed (a newer one may be pending)
	CreatedAt  time.Time      `json:"created_at"`
	Connection NodeConnection `json:"connection"`
	// Selectors are, per identity, the local processes the agent serves it
	// to; an identity not listed serves any local caller.
	Selectors map[string][]string `json:"selectors,omitempty"`
}

// NodeConnection is what the xDS server knows of a node.
type NodeConnection struct {
	Connected bool              `json:"connected"`
	Streams   int               `json:"streams"`
	Acked     map[string]string `json:"acked,omitempty"` // type URL -> last ACKed version
	NACKs     int               `json:"nacks,omitempty"`
	LastNACK  string            `json:"last_nack,omitempty"`
	LastSeen  *time.Time        `json:"last_seen,omitempty"`
}

// JoinToken is the answer of POST /v1/nodes and POST /v1/nodes/{name}/token:
// a one-time token and what `meshca bootstrap` needs besides it.
type JoinToken struct {
	Node       Node      `json:"node"`
	Token      string    `json:"token"`
	Expires    time.Time `json:"expires"`
	CASHA256   string    `json:"ca_sha256"`   // SHA-256 of the CA that signs meshca's server certificate: the bootstrap pin
	XDSAddress string    `json:"xds_address"` // where meshca serves xDS and joins
}

// RevokeRequest is the body of POST /v1/revoke/{identity} and
// POST /v1/nodes/{name}/revoke.
type RevokeRequest struct {
	Reason string `json:"reason,omitempty"`
}

// Revoked answers a revocation.
type Revoked struct {
	Serials []string `json:"serials"` // certificates put on the CRL
	Nodes   int      `json:"nodes"`   // nodes the change was pushed to
	// Warnings name the nodes whose listeners or clusters presented the
	// revoked identity and now have no certificate for them.
	Warnings []string `json:"warnings,omitempty"`
	// Pushed is set when the request asked to wait (wait=pushed).
	Pushed *Pushed `json:"pushed,omitempty"`
}

// Query parameters of writes that can wait until the proxies have the
// change: ?wait=pushed&timeout=5s. Without them a write returns once it is
// committed, and the change reaches the nodes right after.
const (
	QueryWait    = "wait"
	QueryTimeout = "timeout"
	WaitPushed   = "pushed"
	DefaultWait  = 5 * time.Second
	MaxWait      = time.Minute
)

// Pushed says how far a committed change reached the connected nodes it
// affects: Have of Nodes have been sent it and acknowledged it, Missing
// have not (yet) when the wait ended, after TookMS milliseconds.
type Pushed struct {
	Nodes    int     `json:"nodes"`
	Have     int     `json:"have"`
	Missing  int     `json:"missing"`
	TookMS   float64 `json:"took_ms"`
	Complete bool    `json:"complete"`
}

// ApplyMeshRequest is the body of POST /v1/mesh.
type ApplyMeshRequest struct {
	Document string `json:"document"` // the mesh file (YAML)
	DryRun   bool   `json:"dry_run,omitempty"`
}

// RollbackMeshRequest is the body of POST /v1/mesh/rollback.
type RollbackMeshRequest struct {
	Version uint64 `json:"version"`
	DryRun  bool   `json:"dry_run,omitempty"`
}

// MeshPlan answers an apply or rollback: the new version and what changed
// (or would change) for each node.
type MeshPlan struct {
	Version uint64                  `json:"version,omitempty"`
	DryRun  bool                    `json:"dry_run,omitempty"`
	Changes map[string][]MeshChange `json:"changes"`
	// Unchanged: the document is already the mesh in use (Version); no
	// version was stored.
	Unchanged bool `json:"unchanged,omitempty"`
	// Pushed is set when the request asked to wait (wait=pushed).
	Pushed *Pushed `json:"pushed,omitempty"`
}

// MeshChange is one resource added, removed or changed for a node.
type MeshChange struct {
	Type string `json:"type"`
	Name string `json:"name"`
	Op   string `json:"op"`
}

// MeshVersion is one stored mesh version.
type MeshVersion struct {
	Version   uint64    `json:"version"`
	AppliedAt time.Time `json:"applied_at"`
	AppliedBy string    `json:"applied_by,omitempty"`
	Document  string    `json:"document,omitempty"`
}

// LogEntry is one access-log entry a proxy sent (GET /v1/logs).
type LogEntry struct {
	Seq       uint64    `json:"seq"`
	Node      string    `json:"node"`
	Time      time.Time `json:"time"`
	Method    string    `json:"method,omitempty"`
	Authority string    `json:"authority,omitempty"`
	Path      string    `json:"path,omitempty"`
	Status    uint32    `json:"status,omitempty"`
	Duration  string    `json:"duration,omitempty"`
	Upstream  string    `json:"upstream,omitempty"`
	Peer      string    `json:"peer,omitempty"`
	Protocol  string    `json:"protocol,omitempty"`
}

// ReissueAllRequest is the body of POST /v1/reissue: re-key every active
// identity now. All must be true, so that an empty request changes nothing.
type ReissueAllRequest struct {
	All bool `json:"all"`
}

// ReissueProgress is one line of POST /v1/reissue's answer, which is
// newline-delimited JSON: a line about every second while identities are
// re-keyed, then a last one with Finished set (and Error if the run stopped
// early).
type ReissueProgress struct {
	Total     int      `json:"total"`
	Reissued  int      `json:"reissued"`
	Failed    int      `json:"failed"`
	ElapsedMS int64    `json:"elapsed_ms"`
	Finished  bool     `json:"finished"`
	Errors    []string `json:"errors,omitempty"` // on the last line: up to 20 failures
	Error     string   `json:"error,omitempty"`
}

// Replica is one meshca server sharing the store: the answer of GET
// /v1/replicas is a list of them, ordered by ID.
type Replica struct {
	ID    string    `json:"id"`
	XDS   string    `json:"xds"` // the address nodes use to reach it
	Since time.Time `json:"since"`
	Self  bool      `json:"self,omitempty"` // the replica that answered
	// Nodes is how the replica's xDS nodes stand, from its last report,
	// while a CA rotation is in progress on a shared store; nil otherwise
	// (and always on bbolt, whose one process counts its own nodes).
	Nodes *ReplicaNodes `json:"nodes,omitempty"`
}

// ReplicaNodes is one replica's report of its xDS nodes during a CA
// rotation, which the leader sums to know when every node has what the
// rotation waits for.
type ReplicaNodes struct {
	// Reported is false while the replica has published no report for
	// the CA set the answering replica loaded: the rotation counts it as
	// not reported, and waits for it. The counts are then zero.
	Reported  bool      `json:"reported"`
	Connected int       `json:"connected"`
	Pending   int       `json:"pending"` // connected nodes that have not acknowledged what was last pushed to them
	At        time.Time `json:"at,omitzero"`
}
