package authority

import "errors"

// Sentinel errors. Errors from ca pass through wrapped, so callers can test
// for those too.
var (
	// ErrCAInUse refuses a CA import once certificates were issued.
	ErrCAInUse = errors.New("the CA has already issued certificates")
	// ErrRotating is returned when a CA rotation is already in progress;
	// the wrapping error says what it waits for and what the operator can
	// do.
	ErrRotating = errors.New("a CA rotation is already in progress")
	// ErrNoRotation: there is no CA rotation to act on.
	ErrNoRotation = errors.New("no CA rotation is in progress")
	// ErrInvalid marks a request that is malformed (a server certificate
	// with an address that cannot be on it).
	ErrInvalid = errors.New("invalid request")
)
