package store

import (
	"encoding/json"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// bucketJoinTokens holds one JoinToken per node, keyed by node name.
var bucketJoinTokens = []byte("join_tokens")

// JoinToken is a node's pending one-time join token: the SHA-256 hash of
// the token, never the token, and when it expires. It is a record of its
// own, read and written only through the Tx methods below, so that no Node
// read for listing or status carries it.
type JoinToken struct {
	Node    string    `json:"node"`
	Hash    []byte    `json:"hash"`
	Expires time.Time `json:"expires"`
}

// PutJoinToken creates or replaces the join token of t.Node, which must be
// a stored node (ErrNotFound otherwise).
func (tx *Tx) PutJoinToken(t JoinToken) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if err := validName("node name", t.Node); err != nil {
		return err
	}
	if len(t.Hash) == 0 {
		return fmt.Errorf("%w: join token of node %q without a hash", ErrInvalid, t.Node)
	}
	if !tx.has(bucketNodes, []byte(t.Node)) {
		return fmt.Errorf("%w: node %q", ErrNotFound, t.Node)
	}
	return tx.put(bucketJoinTokens, []byte(t.Node), t)
}

// JoinToken returns the pending join token of node, or ErrNotFound when it
// has none (never issued, redeemed, or the node revoked).
func (tx *Tx) JoinToken(node string) (JoinToken, error) {
	var t JoinToken
	err := tx.get(bucketJoinTokens, []byte(node), &t)
	return t, err
}

// DeleteJoinToken removes the join token of node; a node without one is
// left as it is.
func (tx *Tx) DeleteJoinToken(node string) error {
	if err := tx.checkWrite(); err != nil {
		return err
	}
	if !tx.has(bucketJoinTokens, []byte(node)) {
		return nil
	}
	if err := tx.kv.del(bucketJoinTokens, []byte(node)); err != nil {
		return fmt.Errorf("store: delete join token of node %q: %w", node, err)
	}
	tx.wrote = true
	return nil
}

// checkJoinTokens verifies that every join token belongs to a stored node
// and is keyed by its name.
func (tx *Tx) checkJoinTokens() []error {
	var problems []error
	_ = tx.scan(bucketJoinTokens, nil, nil, func(k, v []byte) error {
		var t JoinToken
		if err := json.Unmarshal(v, &t); err != nil {
			problems = append(problems, fmt.Errorf("join token %q: %w", k, err))
			return nil
		}
		if t.Node != string(k) {
			problems = append(problems, fmt.Errorf("join token %q: record says node %q", k, t.Node))
		}
		if !tx.has(bucketNodes, k) {
			problems = append(problems, fmt.Errorf("join token %q: no such node", k))
		}
		return nil
	})
	return problems
}

// schema1Node is a node record as schema version 1 wrote it: the join
// token's hash and expiry inside the node.
type schema1Node struct {
	Node
	TokenHash    []byte    `json:"token_hash,omitempty"`
	TokenExpires time.Time `json:"token_expires,omitempty"`
}

// migrateJoinTokens moves the join tokens of schema version 1 out of the
// node records into their own bucket. A node that joined before JoinedAt
// was recorded (no JoinedAt, no token expiry) gets its UpdatedAt as
// JoinedAt, so that "joined" is read from JoinedAt alone from now on.
func migrateJoinTokens(btx *bolt.Tx) error {
	nodes, tokens := btx.Bucket(bucketNodes), btx.Bucket(bucketJoinTokens)
	var old []schema1Node
	err := nodes.ForEach(func(k, v []byte) error {
		var n schema1Node
		if err := json.Unmarshal(v, &n); err != nil {
			return fmt.Errorf("decode node %q: %w", k, err)
		}
		old = append(old, n)
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range old {
		if len(n.TokenHash) > 0 {
			v, err := json.Marshal(JoinToken{Node: n.Name, Hash: n.TokenHash, Expires: n.TokenExpires})
			if err != nil {
				return fmt.Errorf("encode join token of node %q: %w", n.Name, err)
			}
			if err := tokens.Put([]byte(n.Name), v); err != nil {
				return fmt.Errorf("put join token of node %q: %w", n.Name, err)
			}
		}
		if n.JoinedAt.IsZero() && n.TokenExpires.IsZero() {
			n.JoinedAt = n.UpdatedAt
		}
		v, err := json.Marshal(n.Node)
		if err != nil {
			return fmt.Errorf("encode node %q: %w", n.Name, err)
		}
		if err := nodes.Put([]byte(n.Name), v); err != nil {
			return fmt.Errorf("put node %q: %w", n.Name, err)
		}
	}
	return nil
}
