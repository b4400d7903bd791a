package nodeapi

// IdentitiesResponse lists the identities assigned to the calling agent
// node, for its agent: which SVIDs to make keys and CSRs for, and which
// local processes may have each one.
type IdentitiesResponse struct {
	Identities []AssignedIdentity `json:"identities"`
	// IssuerSerial is the serial of the CA meshca issues from now; only
	// when the request carried IssuerHeader (see there).
	IssuerSerial string `json:"issuer_serial,omitempty"`
}

// AssignedIdentity is one identity of an agent node.
type AssignedIdentity struct {
	Name     string `json:"name"`
	SPIFFEID string `json:"spiffe_id"`
	// Selectors name the local processes the agent may serve the identity
	// to (uid:N, gid:N, path:/abs/path; every one must match, see
	// internal/selector); empty: any local caller.
	Selectors []string `json:"selectors,omitempty"`
}

// WatchIdentitiesMethod is a server-streaming method: the calling agent
// node sends one IdentitiesRequest and receives an IdentitiesResponse at
// once, then another whenever the answer changes (an identity assigned,
// unassigned or revoked, its selectors changed, the node revoked, or
// meshca switched to another issuing CA), until the stream ends. Like
// Identities it is served only on the node's authenticated connection,
// and the IssuerHeader works the same way. A server that predates it
// answers Unimplemented: the agent then polls Identities.
const WatchIdentitiesMethod = "WatchIdentities"

// FullWatchIdentitiesMethod is the gRPC path of WatchIdentities.
const FullWatchIdentitiesMethod = "/" + Service + "/" + WatchIdentitiesMethod
