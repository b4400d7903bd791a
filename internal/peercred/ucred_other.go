//go:build !linux

package peercred

import "net"

func ucred(*net.UnixConn) (Caller, error) { return Caller{}, ErrUnsupported }
