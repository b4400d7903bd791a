package xds

import (
	"crypto/x509"
	"fmt"
)

// CloseNodeExcept ends the connections of a node, and the streams on them,
// that were made with a node certificate other than those whose serials
// (lowercase hex) are in keep: once a node joined again or switched to its
// renewed certificate, connections made with the certificates it replaced
// must not outlive them. It returns how many connections it closed. A
// connection still in its handshake is not affected; the node keeps its
// snapshot.
func (s *Server) CloseNodeExcept(node string, keep ...string) int {
	return s.conns.closeExcept(node, keep)
}

// leafSerial is how meshca names a certificate: its serial in lowercase
// hex.
func leafSerial(c *x509.Certificate) string { return fmt.Sprintf("%x", c.SerialNumber) }
