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
