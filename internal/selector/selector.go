// Package selector reads the selectors that name the workloads of one
// identity assignment: uid:N, gid:N and path:/abs/path. The registry
// validates them where they are written (meshca node assign) and the node
// agent's attestation matches local callers against them; this package
// only parses and writes them back, so that it costs its importers no
// dependency.
package selector

import (
	"errors"
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Selector kinds.
const (
	KindUID  = "uid"
	KindGID  = "gid"
	KindPath = "path"
)

// Bounds on what one assignment carries.
const (
	MaxSelectors = 16   // selectors per assignment
	MaxLength    = 1024 // bytes per selector, kind included
)

// ErrSelector marks a selector that cannot be read or breaks a bound.
var ErrSelector = errors.New("invalid selector")

// Selector is one parsed selector.
type Selector struct {
	Kind  string // KindUID, KindGID or KindPath
	Value string // a decimal number for uid and gid; an absolute clean path
}

// String is the selector as written: kind:value.
func (s Selector) String() string { return s.Kind + ":" + s.Value }

// Parse reads one selector. Numbers are written back without leading
// zeros, so that "uid:01000" and "uid:1000" are the same selector.
func Parse(s string) (Selector, error) {
	if len(s) > MaxLength {
		return Selector{}, fmt.Errorf("%w: %d bytes, at most %d", ErrSelector, len(s), MaxLength)
	}
	kind, value, ok := strings.Cut(s, ":")
	if !ok {
		return Selector{}, fmt.Errorf("%w %q: write kind:value (uid:1000, gid:1000 or path:/usr/bin/app)", ErrSelector, s)
	}
	switch kind {
	case KindUID, KindGID:
		n, err := strconv.ParseUint(value, 10, 32)
		if err != nil {
			return Selector{}, fmt.Errorf("%w %q: %s takes a decimal number from 0 to %d", ErrSelector, s, kind, uint32(1<<32-1))
		}
		return Selector{Kind: kind, Value: strconv.FormatUint(n, 10)}, nil
	case KindPath:
		if !strings.HasPrefix(value, "/") || path.Clean(value) != value || strings.ContainsRune(value, 0) {
			return Selector{}, fmt.Errorf("%w %q: path takes the absolute, clean path of an executable (path:/usr/bin/app; no .., no trailing /)", ErrSelector, s)
		}
		return Selector{Kind: kind, Value: value}, nil
	default:
		return Selector{}, fmt.Errorf("%w %q: unknown kind %q: use uid, gid or path", ErrSelector, s, kind)
	}
}

// Normalize parses every selector of one assignment and returns them
// written back, sorted, without duplicates; nil for none. It names the
// first selector it refuses.
func Normalize(selectors []string) ([]string, error) {
	if len(selectors) > MaxSelectors {
		return nil, fmt.Errorf("%w: %d selectors, at most %d per assignment", ErrSelector, len(selectors), MaxSelectors)
	}
	if len(selectors) == 0 {
		return nil, nil
	}
	out := make([]string, 0, len(selectors))
	for _, s := range selectors {
		sel, err := Parse(s)
		if err != nil {
			return nil, err
		}
		out = append(out, sel.String())
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}
