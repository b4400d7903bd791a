// Package attest decides which local processes may have an identity
// assigned to their node: selectors (uid:N, gid:N, path:/abs/path; see
// internal/selector) name the workloads of one assignment, and a caller
// identified by its Unix peer credentials (peercred.Caller) matches an
// assignment when it matches every one of its selectors. An assignment
// without selectors serves any local caller. Gate applies this on a gRPC
// socket and reports every refusal.
//
// Selectors are validated where they are written (meshca node assign) with
// selector.Normalize; Match treats a selector it cannot read as not
// matching, so a malformed selector never widens an assignment.
package attest

import (
	"strconv"

	"github.com/meshca/meshca/internal/peercred"
	"github.com/meshca/meshca/internal/selector"
)

// matches reports whether c matches this one selector.
func matches(s selector.Selector, c peercred.Caller) bool {
	switch s.Kind {
	case selector.KindUID:
		return s.Value == strconv.FormatUint(uint64(c.UID), 10)
	case selector.KindGID:
		return s.Value == strconv.FormatUint(uint64(c.GID), 10)
	case selector.KindPath:
		return c.Path != "" && s.Value == c.Path
	}
	return false
}

// Match reports whether c matches every selector (an empty list matches
// every caller). A selector that does not parse matches nothing.
func Match(c peercred.Caller, selectors []string) bool {
	for _, s := range selectors {
		sel, err := selector.Parse(s)
		if err != nil || !matches(sel, c) {
			return false
		}
	}
	return true
}
