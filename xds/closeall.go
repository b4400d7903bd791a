package xds

// CloseAll ends every open stream and connection of every node, as
// CloseNode does for one node, and returns how many nodes it closed. A
// server that can no longer confirm that what it serves is current (its
// replica lost the store) uses it to send its nodes to another replica.
func (s *Server) CloseAll() int {
	nodes := map[string]struct{}{}
	s.streamsMu.Lock()
	for n := range s.cancels {
		nodes[n] = struct{}{}
	}
	s.streamsMu.Unlock()
	s.conns.mu.Lock()
	for n := range s.conns.conns {
		nodes[n] = struct{}{}
	}
	s.conns.mu.Unlock()
	for n := range nodes {
		s.closeNode(n)
	}
	return len(nodes)
}
