package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"time"
)

// bucketHolderCerts holds, for every agent node holding an identity, the
// serial of its current certificate for it. Each record is written under two
// keys, so that both listings are one prefix scan:
//
//	i 0x00 identity 0x00 node
//	n 0x00 node 0x00 identity
var bucketHolderCerts = []byte("holder_certs")

// HolderCert is the current certificate of one agent node for one identity.
// The certificate itself is a Cert with Node set; older ones of the pair
// stay listed under the identity until they expire.
type HolderCert struct {
	Identity  string    `json:"identity"`
	Node      string    `json:"node"`
	Serial    string    `json:"serial"`
	UpdatedAt time.Time `json:"updated_at"`
}

func holderByIdentity(identity, node string) []byte {
	return []byte("i\x00" + identity + "\x00" + node)
}

func holderByNode(node, identity string) []byte {
	return []byte("n\x00" + node + "\x00" + identity)
}

// PutHolderCert records h as the current certificate of its node for its
// identity, replacing any earlier one. The certificate must be stored, and
// be the node's for that identity (ErrInvalid otherwise).
func (tx *Tx) PutHolderCert(h HolderCert) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("holder identity", h.Identity); err != nil {
		return err
	}
	if err := validName("holder node", h.Node); err != nil {
		return err
	}
	c, err := tx.Cert(h.Serial)
	if err != nil {
		return fmt.Errorf("store: holder certificate %s: %w", h.Serial, err)
	}
	if c.Identity != h.Identity || c.Node != h.Node {
		return fmt.Errorf("%w: certificate %s is of %q on node %q, not of %q on node %q", ErrInvalid, h.Serial, c.Identity, c.Node, h.Identity, h.Node)
	}
	if err := tx.put(bucketHolderCerts, holderByIdentity(h.Identity, h.Node), h); err != nil {
		return err
	}
	return tx.put(bucketHolderCerts, holderByNode(h.Node, h.Identity), h)
}

// HolderCert returns the current certificate record of node for identity,
// or ErrNotFound.
func (tx *Tx) HolderCert(identity, node string) (HolderCert, error) {
	var h HolderCert
	err := tx.get(bucketHolderCerts, holderByIdentity(identity, node), &h)
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
	err := tx.scan(bucketHolderCerts, prefix, nil, func(k, v []byte) error {
		var h HolderCert
		if err := json.Unmarshal(v, &h); err != nil {
			return fmt.Errorf("store: decode %s %q: %w", bucketHolderCerts, k, err)
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
	if !tx.has(bucketHolderCerts, holderByIdentity(identity, node)) {
		return nil
	}
	for _, k := range [][]byte{holderByIdentity(identity, node), holderByNode(node, identity)} {
		if err := tx.kv.del(bucketHolderCerts, k); err != nil {
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
	_ = tx.scan(bucketHolderCerts, []byte("i\x00"), nil, func(k, v []byte) error {
		var h HolderCert
		if err := json.Unmarshal(v, &h); err != nil {
			problems = append(problems, fmt.Errorf("holder record %q: %w", k, err))
			return nil
		}
		if mirror, err := tx.kv.get(bucketHolderCerts, holderByNode(h.Node, h.Identity)); err != nil || !bytes.Equal(mirror, v) {
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
	_ = tx.scan(bucketHolderCerts, []byte("n\x00"), nil, func(k, v []byte) error {
		var h HolderCert
		if err := json.Unmarshal(v, &h); err == nil && !tx.has(bucketHolderCerts, holderByIdentity(h.Identity, h.Node)) {
			problems = append(problems, fmt.Errorf("by-node holder record of %q on node %q has no by-identity record", h.Identity, h.Node))
		}
		return nil
	})
	return problems
}
