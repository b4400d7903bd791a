package testkit

import (
	"context"
	"net"
	"time"
)

// DialTimeout bounds Dial's connection attempt.
const DialTimeout = 5 * time.Second

// Dial opens a TCP connection to addr from the loopback address local
// (empty: any), as an outside client does. Several local addresses
// (127.0.0.2, 127.0.0.3, ...) let a test be several clients to meshca's
// per-address limits. It gives up after DialTimeout or when ctx ends.
func Dial(ctx context.Context, addr, local string) (net.Conn, error) {
	d := &net.Dialer{Timeout: DialTimeout}
	if local != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(local)}
	}
	return d.DialContext(ctx, "tcp", addr)
}
