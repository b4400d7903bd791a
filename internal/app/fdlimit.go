//go:build unix

package app

import (
	"fmt"
	"syscall"
)

// raiseFileLimit raises the soft limit on open descriptors to the hard
// limit (the Go runtime does the same on Linux, but not everywhere, and
// nothing reported it) and returns the limit in force.
func raiseFileLimit() (soft, hard uint64, err error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, 0, fmt.Errorf("read descriptor limit: %w", err)
	}
	if lim.Cur < lim.Max {
		raised := lim
		raised.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err != nil {
			return uint64(lim.Cur), uint64(lim.Max), fmt.Errorf("raise descriptor limit to %d: %w", lim.Max, err)
		}
		lim = raised
	}
	return uint64(lim.Cur), uint64(lim.Max), nil
}
