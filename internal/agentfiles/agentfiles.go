// Package agentfiles is the layout of the files the node agent writes for
// proxyless gRPC: one directory per identity under the agent's files
// directory, holding the identity's certificate chain, private key and the
// trust bundle, and the name of the grpc-go certificate provider instance
// that reads them. The grpc bootstrap (internal/bootstrap), the resources
// meshca sends gRPC agent nodes (package mesh) and the agent that writes
// the files all take names from here.
//
// Caveats: grpc-go's file_watcher re-reads the three files every refresh
// interval and keeps its current certificate when the certificate and key
// it reads do not match. Each file is replaced by rename, so a reader sees
// the old or the new content of each; a reader that catches the new
// certificate with the old key skips that read and takes both on the next.
package agentfiles

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/meshca/meshca/internal/atomicfile"
)

// File names inside an identity's directory.
const (
	CertFile   = "cert.pem"   // certificate chain, leaf first
	KeyFile    = "key.pem"    // PKCS#8 private key, 0600
	BundleFile = "bundle.pem" // trust bundle: the roots peers are verified against
)

// instancePrefix starts every certificate provider instance name.
const instancePrefix = "meshca-"

// ErrInvalidIdentity is returned for an identity name that cannot be one
// directory name.
var ErrInvalidIdentity = errors.New("identity name is not usable as a directory name")

// Paths returns where the files of identity live under dir.
func Paths(dir, identity string) (cert, key, bundle string) {
	d := filepath.Join(dir, identity)
	return filepath.Join(d, CertFile), filepath.Join(d, KeyFile), filepath.Join(d, BundleFile)
}

// Instance is the name of the grpc-go certificate provider instance that
// reads identity's files: the grpc bootstrap declares it, clusters and
// server listeners name it.
func Instance(identity string) string { return instancePrefix + identity }

// Write replaces identity's three files under dir, each by an atomic
// rename (key 0600, the others 0644), creating the identity's directory
// (0700) when needed. The key is written before the certificate, so a
// reader never sees a certificate whose key is not yet on disk.
func Write(dir, identity string, chainPEM, keyPEM, bundlePEM []byte) error {
	if identity == "" || identity == "." || identity == ".." || strings.ContainsAny(identity, `/\`) {
		return fmt.Errorf("agentfiles: %w: %q", ErrInvalidIdentity, identity)
	}
	if err := os.MkdirAll(filepath.Join(dir, identity), 0o700); err != nil {
		return fmt.Errorf("agentfiles: identity %q: %w", identity, err)
	}
	cert, key, bundle := Paths(dir, identity)
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{{bundle, bundlePEM, 0o644}, {key, keyPEM, 0o600}, {cert, chainPEM, 0o644}} {
		if err := atomicfile.Write(f.path, f.data, f.perm); err != nil {
			return fmt.Errorf("agentfiles: identity %q: write %s: %w", identity, filepath.Base(f.path), err)
		}
	}
	return nil
}
