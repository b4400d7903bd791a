package agent

import "errors"

// Sentinel errors.
var (
	// ErrConfig wraps every invalid Config.
	ErrConfig = errors.New("agent: invalid configuration")
	// ErrSocketPath wraps a socket path the agent will not serve on.
	ErrSocketPath = errors.New("agent: unsafe socket path")
	// ErrBadAnswer wraps an answer from meshca that does not check out
	// (a certificate for another key or identity, a bundle that does not
	// parse): nothing of it is used.
	ErrBadAnswer = errors.New("agent: answer from meshca does not check out")
)
