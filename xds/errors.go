package xds

import "errors"

// errInvalidResource marks a resource that failed validation and was not
// published.
var errInvalidResource = errors.New("invalid resource")

// ErrNodeRevoked is wrapped by an Authenticator's error for a certificate
// meshca issued to a node that was revoked since.
var ErrNodeRevoked = errors.New("node was revoked")
