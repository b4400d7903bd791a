package mesh

import (
	"errors"
	"strconv"
	"strings"
)

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrInvalid: the mesh document is malformed or inconsistent. The
	// error is a *ValidationError that lists every problem with its path.
	ErrInvalid = errors.New("invalid mesh")
	// ErrMissingIdentity: the node does not hold an identity whose
	// certificate its configuration would present.
	ErrMissingIdentity = errors.New("node does not hold the identity")
	// ErrConflict: two parts of the mesh give one node two different
	// resources with the same name, or two listeners on the same port.
	ErrConflict = errors.New("conflicting resources for node")
	// ErrUnknownKind: Node.Kind is not sidecar, front-proxy or grpc.
	ErrUnknownKind = errors.New("unknown node kind")
	// ErrInvalidResource: a generated resource failed validation. It is a
	// bug in this package, reported instead of publishing a config that
	// clients would NACK.
	ErrInvalidResource = errors.New("generated resource is invalid")
)

// Problem is one thing wrong in a mesh document. Path locates it, e.g.
// "services[2].endpoints[0].address"; it is empty for the whole document.
type Problem struct {
	Path    string
	Message string
}

func (p Problem) String() string {
	if p.Path == "" {
		return p.Message
	}
	return p.Path + ": " + p.Message
}

// ValidationError lists every problem found in a mesh document, in
// document order. errors.Is(err, ErrInvalid) is true.
type ValidationError struct {
	Problems []Problem
}

// Error lists the problems one per line after a summary line.
func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString(ErrInvalid.Error())
	switch len(e.Problems) {
	case 1:
		b.WriteString(": 1 problem")
	default:
		b.WriteString(": ")
		b.WriteString(strconv.Itoa(len(e.Problems)))
		b.WriteString(" problems")
	}
	for _, p := range e.Problems {
		b.WriteString("\n  ")
		b.WriteString(p.String())
	}
	return b.String()
}

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }
