//go:build !unix

package app

// raiseFileLimit has nothing to raise where descriptors have no rlimit.
func raiseFileLimit() (soft, hard uint64, err error) { return 0, 0, nil }
