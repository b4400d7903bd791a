package sds

import "errors"

// Sentinel errors. Messages never contain key material.
var (
	ErrNoName    = errors.New("secret name is empty")
	ErrBadChain  = errors.New("certificate chain PEM does not parse")
	ErrBadKey    = errors.New("private key PEM does not parse")
	ErrKeyChain  = errors.New("private key does not match the leaf certificate")
	ErrBadBundle = errors.New("trust bundle PEM does not parse")
	ErrBadCRL    = errors.New("CRL PEM does not parse")
)
