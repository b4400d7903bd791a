package store

import (
	"bytes"
	"maps"
	"slices"
	"sync"
)

// nodeCache keeps the records of recently read nodes decoded, each with
// the exact bytes it was decoded from: a read whose bytes are the same
// takes a copy of the decoded record instead of decoding it again. Every
// agent CSR reads its node's record twice (before signing and in the
// commit), and the record of an agent node holding a hundred identities
// took about 50 µs to decode, as much as its CSR's store writes. Keyed by
// the bytes, it can never return a record other than the one stored (in
// whichever transaction reads it, uncommitted writes included). Safe for
// concurrent use; bounded at maxCachedNodes, then emptied; the zero value
// is ready.
type nodeCache struct {
	mu sync.Mutex
	m  map[string]cachedNode
}

type cachedNode struct {
	raw  []byte
	node Node
}

// maxCachedNodes bounds nodeCache: a few MiB for nodes holding a hundred
// identities each.
const maxCachedNodes = 1024

// get returns a copy of the record of node name decoded from raw, if it
// is the one cached.
func (c *nodeCache) get(name string, raw []byte) (Node, bool) {
	c.mu.Lock()
	e, ok := c.m[name]
	c.mu.Unlock()
	if !ok || !bytes.Equal(e.raw, raw) {
		return Node{}, false
	}
	return e.node.clone(), true
}

// put caches n, decoded from raw (which the cache copies).
func (c *nodeCache) put(name string, raw []byte, n Node) {
	e := cachedNode{raw: bytes.Clone(raw), node: n.clone()}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m == nil || len(c.m) >= maxCachedNodes {
		c.m = make(map[string]cachedNode)
	}
	c.m[name] = e
}

// clone copies n's slices and map, so that neither the cache nor its
// callers see the other's changes.
func (n Node) clone() Node {
	n.Identities = slices.Clone(n.Identities)
	if n.Selectors != nil {
		sel := maps.Clone(n.Selectors)
		for id, s := range sel {
			sel[id] = slices.Clone(s)
		}
		n.Selectors = sel
	}
	return n
}
