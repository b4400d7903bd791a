package registry

import (
	"time"

	"github.com/meshca/meshca/internal/store"
)

// The registry answers with the types below, never with storage records:
// they have no field for a join token, its hash or a private key, so no
// caller can show one by mistake. Each is filled from its record in one
// function here.

// Identity and node states, as Identity.State and Node.State report them.
const (
	StateActive  = store.StateActive
	StateRevoked = store.StateRevoked
)

// Identity is a registered service identity.
type Identity struct {
	Name          string
	SPIFFEID      string
	DNSNames      []string
	TTL           time.Duration
	Admin         bool   // its certificates may call the admin API
	State         string // StateActive or StateRevoked
	CurrentSerial string // the certificate served to its nodes; "" if none
	CreatedAt     time.Time
	UpdatedAt     time.Time
}

func identityView(id store.Identity) Identity {
	return Identity{
		Name: id.Name, SPIFFEID: id.SPIFFEID, DNSNames: id.DNSNames, TTL: id.TTL, Admin: id.Admin,
		State: id.State, CurrentSerial: id.CurrentSerial, CreatedAt: id.CreatedAt, UpdatedAt: id.UpdatedAt,
	}
}

// Cert is an issued certificate, without its key.
type Cert struct {
	Serial       string
	Identity     string // identity name, or node/NAME
	DER          []byte
	Chain        [][]byte // intermediates, issuer first; no root
	IssuerSerial string
	NotBefore    time.Time
	NotAfter     time.Time
	IssuedAt     time.Time
	Node         string // the agent node it was signed for; "" for a shared one
}

func certView(c store.Cert) Cert {
	return Cert{
		Serial: c.Serial, Identity: c.Identity, DER: c.DER, Chain: c.Chain, IssuerSerial: c.IssuerSerial,
		NotBefore: c.NotBefore, NotAfter: c.NotAfter, IssuedAt: c.IssuedAt, Node: c.Node,
	}
}

// Node is a registered node, without its join token.
type Node struct {
	Name       string
	Kind       string // a mesh node kind
	Identities []string
	State      string    // StateActive or StateRevoked
	Agent      bool      // its agent makes its keys and sends CSRs
	JoinedAt   time.Time // when it first redeemed a join token; zero before
	CreatedAt  time.Time
	UpdatedAt  time.Time
	// Selectors restrict, per identity, which local processes the agent
	// serves it to; an identity without an entry serves any local caller.
	Selectors map[string][]string
}

func nodeView(n store.Node) Node {
	return Node{
		Name: n.Name, Kind: n.Kind, Identities: n.Identities, State: n.State, Agent: n.Agent, Selectors: n.Selectors,
		JoinedAt: n.JoinedAt, CreatedAt: n.CreatedAt, UpdatedAt: n.UpdatedAt,
	}
}

// Event is one audit record.
type Event struct {
	Seq      uint64
	Time     time.Time
	Action   string
	Actor    string
	Identity string
	Node     string
	Serial   string
	Outcome  string // store.OutcomeOK, OutcomeDenied or OutcomeFailed
	Detail   string
}

func eventView(e store.Event) Event {
	return Event{
		Seq: e.Seq, Time: e.Time, Action: e.Action, Actor: e.Actor, Identity: e.Identity,
		Node: e.Node, Serial: e.Serial, Outcome: e.Outcome, Detail: e.Detail,
	}
}

// MeshDocument is one applied version of the mesh document.
type MeshDocument struct {
	Version   uint64
	Document  []byte
	AppliedBy string
	AppliedAt time.Time
}

func meshView(m store.Mesh) MeshDocument {
	return MeshDocument{Version: m.Version, Document: m.Document, AppliedBy: m.AppliedBy, AppliedAt: m.AppliedAt}
}

// views maps a slice of records to their views.
func views[R, V any](recs []R, view func(R) V) []V {
	if recs == nil {
		return nil
	}
	out := make([]V, len(recs))
	for i, r := range recs {
		out[i] = view(r)
	}
	return out
}
