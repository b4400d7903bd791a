package peercred

import (
	"fmt"
	"net"

	"golang.org/x/sys/unix"
)

// ucred reads SO_PEERCRED from conn.
func ucred(conn *net.UnixConn) (Caller, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("peercred: raw connection: %w", err)
	}
	var (
		cred *unix.Ucred
		cerr error
	)
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return Caller{}, fmt.Errorf("peercred: raw connection: %w", err)
	}
	if cerr != nil {
		return Caller{}, fmt.Errorf("peercred: read SO_PEERCRED: %w", cerr)
	}
	return Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}
