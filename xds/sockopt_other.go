//go:build !linux

package xds

import (
	"net"
	"time"
)

// setUserTimeout is Linux's TCP_USER_TIMEOUT; elsewhere keepalive alone
// finds dead peers.
func setUserTimeout(net.Conn, time.Duration) {}
