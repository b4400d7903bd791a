package xds

import (
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// errInvalidResource marks a resource that failed validation and was not
// published.
var errInvalidResource = errors.New("invalid resource")

// ErrNodeRevoked is wrapped by an Authenticator's error for a certificate
// meshca issued to a node that was revoked since.
var ErrNodeRevoked = errors.New("node was revoked")

// errSignBusy is the refusal of a CSR beyond the signing queue.
var errSignBusy = status.Error(codes.ResourceExhausted, "meshca is signing as many CSRs as it can; retry with backoff")
