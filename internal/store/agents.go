package store

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// bucketAgents holds what meshca keeps of agent nodes. For every agent node
// holding an identity, the serial of its current certificate for it, written
// under two keys so that both listings are one prefix scan; and each agent
// node's CSR count:
//
//	i 0x00 identity 0x00 node   HolderCert
//	n 0x00 node 0x00 identity   HolderCert (the same)
//	l 0x00 node                 SignCount
var bucketAgents = []byte("agents")

// HolderCert is the current certificate of one agent node for one identity.
// The certificate itself is a Cert with Node set; older ones of the pair
// stay listed under the identity until they expire.
type HolderCert struct {
	Identity  string    `json:"identity"`
	Node      string    `json:"node"`
	Serial    string    `json:"serial"`
	UpdatedAt time.Time `json:"updated_at"`
}

// KindAgentCert is the change of a certificate signed for an agent node
// (Key: serial; Identity: its identity). It is not a KindCert: no node's
// configuration holds such a certificate, so node configuration has
// nothing to rebuild for it.
const KindAgentCert Kind = "agent_cert"

func holderByIdentity(identity, node string) []byte {
	return []byte("i\x00" + identity + "\x00" + node)
}

func holderByNode(node, identity string) []byte {
	return []byte("n\x00" + node + "\x00" + identity)
}

// PutHolderCert records c, a stored certificate signed for an agent node
// (c.Node set), as the current certificate of c.Node for c.Identity,
// replacing any earlier one. ErrInvalid for a certificate without a node,
// ErrNotFound for one not stored.
func (tx *Tx) PutHolderCert(c Cert, at time.Time) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("holder identity", c.Identity); err != nil {
		return err
	}
	if err := validName("holder node", c.Node); err != nil {
		return err
	}
	if !tx.has(bucketCerts, []byte(c.Serial)) {
		return fmt.Errorf("%w: holder certificate %s", ErrNotFound, c.Serial)
	}
	// Encoded once for both keys: this runs inside the serial part of a
	// group commit.
	val, err := json.Marshal(HolderCert{Identity: c.Identity, Node: c.Node, Serial: c.Serial, UpdatedAt: at})
	if err != nil {
		return fmt.Errorf("store: encode %s: %w", bucketAgents, err)
	}
	if err := tx.putRaw(bucketAgents, holderByIdentity(c.Identity, c.Node), val); err != nil {
		return err
	}
	return tx.putRaw(bucketAgents, holderByNode(c.Node, c.Identity), val)
}

// HolderCert returns the current certificate record of node for identity,
// or ErrNotFound.
func (tx *Tx) HolderCert(identity, node string) (HolderCert, error) {
	var h HolderCert
	err := tx.get(bucketAgents, holderByIdentity(identity, node), &h)
	return h, err
}

// HolderCertsOfIdentity returns the current certificate of every agent node
// holding identity, by node name.
func (tx *Tx) HolderCertsOfIdentity(identity string) ([]HolderCert, error) {
	return tx.holders([]byte("i\x00" + identity + "\x00"))
}

// HolderCertsOfNode returns the current certificates of node, by identity.
func (tx *Tx) HolderCertsOfNode(node string) ([]HolderCert, error) {
	return tx.holders([]byte("n\x00" + node + "\x00"))
}

func (tx *Tx) holders(prefix []byte) ([]HolderCert, error) {
	var out []HolderCert
	err := tx.scan(bucketAgents, prefix, nil, func(k, v []byte) error {
		var h HolderCert
		if err := json.Unmarshal(v, &h); err != nil {
			return fmt.Errorf("store: decode %s %q: %w", bucketAgents, k, err)
		}
		out = append(out, h)
		return nil
	})
	return out, err
}

// DeleteHolderCert forgets node's current certificate for identity (the
// certificate stays stored); nothing happens when there is none.
func (tx *Tx) DeleteHolderCert(identity, node string) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if !tx.has(bucketAgents, holderByIdentity(identity, node)) {
		return nil
	}
	for _, k := range [][]byte{holderByIdentity(identity, node), holderByNode(node, identity)} {
		if err := tx.kv.del(bucketAgents, k); err != nil {
			return fmt.Errorf("store: delete holder certificate of %q on %q: %w", identity, node, err)
		}
	}
	tx.wrote = true
	return nil
}

// checkHolderCerts verifies that every holder record is written under both
// keys alike and names a stored certificate of its identity and node.
func (tx *Tx) checkHolderCerts() []error {
	var problems []error
	_ = tx.scan(bucketAgents, []byte("i\x00"), nil, func(k, v []byte) error {
		var h HolderCert
		if err := json.Unmarshal(v, &h); err != nil {
			problems = append(problems, fmt.Errorf("holder record %q: %w", k, err))
			return nil
		}
		if mirror, err := tx.kv.get(bucketAgents, holderByNode(h.Node, h.Identity)); err != nil || !bytes.Equal(mirror, v) {
			problems = append(problems, fmt.Errorf("holder record of %q on node %q has no matching by-node record", h.Identity, h.Node))
		}
		var rec certRecord
		if err := tx.get(bucketCerts, []byte(h.Serial), &rec); err != nil || rec.Identity != h.Identity || rec.Node != h.Node {
			problems = append(problems, fmt.Errorf("holder record of %q on node %q names certificate %s, which is not theirs", h.Identity, h.Node, h.Serial))
		} else if rec.SealedKey != nil {
			problems = append(problems, fmt.Errorf("certificate %s of %q on agent node %q has a key meshca holds", h.Serial, h.Identity, h.Node))
		}
		return nil
	})
	_ = tx.scan(bucketAgents, []byte("n\x00"), nil, func(k, v []byte) error {
		var h HolderCert
		if err := json.Unmarshal(v, &h); err == nil && !tx.has(bucketAgents, holderByIdentity(h.Identity, h.Node)) {
			problems = append(problems, fmt.Errorf("by-node holder record of %q on node %q has no by-identity record", h.Identity, h.Node))
		}
		return nil
	})
	return problems
}

// SignCount counts the CSRs signed for an agent node in the current
// rate-limit window, kept in the store so that the limit holds across
// restarts and replicas.
type SignCount struct {
	Node        string    `json:"node"`
	WindowStart time.Time `json:"window_start"`
	Signs       int       `json:"signs"`
}

func signCountKey(node string) []byte { return []byte("l\x00" + node) }

// SignCount returns node's CSR count; the zero count (with Node set) when
// none was written.
func (tx *Tx) SignCount(node string) (SignCount, error) {
	c := SignCount{Node: node}
	err := tx.get(bucketAgents, signCountKey(node), &c)
	if errors.Is(err, ErrNotFound) {
		return SignCount{Node: node}, nil
	}
	return c, err
}

// PutSignCount writes c.
func (tx *Tx) PutSignCount(c SignCount) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("node name", c.Node); err != nil {
		return err
	}
	return tx.put(bucketAgents, signCountKey(c.Node), c)
}
