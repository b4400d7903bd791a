// Package peercred identifies the process at the other end of a Unix
// socket by its kernel credentials (SO_PEERCRED), for gRPC servers that
// serve local workloads: Credentials is a grpc credentials.TransportCredentials
// that reads the peer's uid, gid and pid when the connection is accepted and
// resolves its executable from /proc/PID/exe; FromContext gives the result
// to a handler as a Caller.
//
// # Caveats
//
// The credentials are those of the process that connected, taken once at
// accept; a process that passed the socket on, or changed uid after
// connecting, is still seen as it was. The executable path is read right
// after accept: if the process has exited by then, or /proc/PID/exe cannot
// be read (another user's process without CAP_SYS_PTRACE, a kernel thread,
// /proc not mounted), Caller.Path is empty and the connection is still
// accepted, so a selector on the path does not match while selectors on
// uid and gid still do. A pid can be reused after the process exits; the
// path is read while the connection is open, which narrows but does not
// close that window.
//
// Only Linux provides SO_PEERCRED as read here; elsewhere every handshake
// fails with ErrUnsupported.
package peercred

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// Errors.
var (
	// ErrNotUnix means the connection is not a Unix socket connection.
	ErrNotUnix = errors.New("peercred: not a Unix socket connection")
	// ErrUnsupported means this platform has no SO_PEERCRED.
	ErrUnsupported = errors.New("peercred: peer credentials are not supported on this platform")
)

// AuthType is what Caller.AuthType reports.
const AuthType = "peercred"

// Caller is the local process at the other end of a connection.
type Caller struct {
	UID  uint32
	GID  uint32
	PID  int32
	Path string // its executable; "" when it could not be read (see Caveats)
}

// AuthType implements credentials.AuthInfo.
func (Caller) AuthType() string { return AuthType }

// String is for logs: uid, gid, pid and path.
func (c Caller) String() string {
	return fmt.Sprintf("uid=%d gid=%d pid=%d path=%q", c.UID, c.GID, c.PID, c.Path)
}

var _ credentials.AuthInfo = Caller{}

// FromContext returns the Caller of a gRPC request served with
// Credentials.
func FromContext(ctx context.Context) (Caller, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Caller{}, false
	}
	c, ok := p.AuthInfo.(Caller)
	return c, ok
}

// Credentials are server transport credentials for a Unix socket: no
// encryption (the kernel carries the bytes), and the peer's Caller as
// AuthInfo. Client handshakes are refused.
type Credentials struct {
	// ProcRoot is where /proc is mounted; "" means "/proc".
	ProcRoot string
}

var _ credentials.TransportCredentials = (*Credentials)(nil)

// New returns server credentials reading the real /proc.
func New() *Credentials { return &Credentials{} }

// ServerHandshake reads the peer's credentials from conn.
func (c *Credentials) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := conn.(*net.UnixConn)
	if !ok {
		return nil, nil, fmt.Errorf("%w (%T)", ErrNotUnix, conn)
	}
	caller, err := ucred(uc)
	if err != nil {
		return nil, nil, err
	}
	caller.Path = c.exe(caller.PID)
	return conn, caller, nil
}

// exe is the executable of pid, "" when it cannot be read.
func (c *Credentials) exe(pid int32) string {
	if pid <= 0 {
		return ""
	}
	root := c.ProcRoot
	if root == "" {
		root = "/proc"
	}
	path, err := os.Readlink(root + "/" + strconv.Itoa(int(pid)) + "/exe")
	if err != nil {
		return ""
	}
	return path
}

// ClientHandshake is refused: these credentials are for servers only.
func (c *Credentials) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: client handshakes are not supported; use insecure credentials on the client side")
}

// Info describes the protocol.
func (c *Credentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: AuthType}
}

// Clone returns a copy.
func (c *Credentials) Clone() credentials.TransportCredentials {
	cp := *c
	return &cp
}

// OverrideServerName does nothing; there is no server name on a Unix
// socket.
func (c *Credentials) OverrideServerName(string) error { return nil }
