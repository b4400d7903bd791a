// Package nodeconfig computes what each node receives — its listeners,
// routes, clusters and endpoints (mesh.Build), the secrets of the
// identities assigned to it, and the trust bundle with the CRLs — from the
// store's change feed, and hands the results to the xDS server as complete
// snapshots through Publisher.
//
// Data flows one way: a write is committed to the store; the store's feed
// names what changed; a Builder works out which nodes that affects (an
// identity's holders are read from the store, not asked of the registry),
// rebuilds each of them on its own workers, and publishes. Nothing here is
// called by the writer, and the xDS server never calls back.
//
// Queues. Each node has at most one build queued and one running: a node
// changed ten times while a worker is busy with it is built once more, from
// what the store holds then. The trust bundle is its own queue of one: a
// CRL re-signed twice while the bundle is being swapped is swapped once
// more. The feed subscription is bounded; when it overflows the Builder
// resyncs (every node is rebuilt, nodes gone from the store are removed).
//
// Connections. A CertWatch, also on the feed, ends the connections a node
// made with node certificates it replaced (a re-join, or the first use of
// a renewed one): the node's record names the certificate in use, and the
// xDS server (Closer) closes the others. Every replica runs one, so a
// change through one replica ends connections on all.
//
// Agents. An AgentWatch, also on the feed, tells the xDS server
// (AgentNotifier) which agent nodes' identities, selectors or issuing CA
// may have changed, so that their agents' identity watches send the new
// answer at once.
//
// Waiting. WaitPushed lets a writer wait until every connected node its
// change affects has been handed its new configuration and acknowledged it
// (Acks, the xDS server's view), by feed position (store.FeedPos): the
// admin API's wait=pushed.
//
// # Caveats
//
// Builds read the store, not the change: a Batch names records, the
// Builder reads their current state. A build that fails (a secret that no
// longer validates, a mesh that no longer builds for the node) is logged
// and the node keeps its last good snapshot until its next change.
//
// The trust bundle and the signed CRL are read from the store (Trust) on a
// store.KindCA or store.KindCRL change: whoever signs a CRL stores it.
// A bundle that holds the same roots in another order is not a change:
// nodes keep the one they have.
//
// An identity's secret is built once per certificate and shared by every
// node holding it (the xDS server then encodes it once); it stays in
// memory while the identity is active.
package nodeconfig
