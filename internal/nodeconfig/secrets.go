package nodeconfig

import (
	"sync"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// secretCache holds, per identity, the secret built for its current
// certificate, shared by every node that holds the identity: a node built
// again while its identities keep their certificates (a mesh change, an
// assignment, a resync, another holder) reads no key from the store and
// parses nothing, and the xDS server, handed the same value again, does
// not encode it again. An entry is keyed by serial, so a re-key replaces
// it; a revoked or deleted identity's entry is dropped when a build sees
// it so. Safe for concurrent use by the workers; two builds of a new
// certificate at once both build it and the later one stays.
type secretCache struct {
	mu sync.Mutex
	m  map[string]cachedSecret // identity name -> its current secret
}

type cachedSecret struct {
	credential // without chain and key: the secret holds them
	secret     types.Resource
}

func (c *secretCache) init() { c.m = map[string]cachedSecret{} }

// get returns identity's secret if it was built for serial (and the same
// SPIFFE ID).
func (c *secretCache) get(identity, spiffeID, serial string) (cachedSecret, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	s, ok := c.m[identity]
	if !ok || s.serial != serial || s.spiffeID != spiffeID {
		return cachedSecret{}, false
	}
	return s, true
}

// put remembers the secret built from cred.
func (c *secretCache) put(cred credential, secret types.Resource) {
	cred.chain, cred.key = nil, nil
	c.mu.Lock()
	defer c.mu.Unlock()
	c.m[cred.identity] = cachedSecret{credential: cred, secret: secret}
}

// forget drops identity's secret.
func (c *secretCache) forget(identity string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.m, identity)
}

// len counts the identities cached.
func (c *secretCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
