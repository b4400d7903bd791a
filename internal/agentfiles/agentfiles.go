// Package agentfiles is the one writer of the files the node agent writes
// for proxyless gRPC (meshca agent --write-files), and their layout: one
// directory per identity under the agent's files directory, holding the
// identity's certificate chain, private key and the trust bundle, and the
// name of the grpc-go certificate provider instance that reads them. The
// grpc bootstrap (internal/bootstrap), the resources meshca sends gRPC
// agent nodes (package mesh) and the agent that writes the files all take
// names from here.
//
// Modes: the private key is 0600; the certificate chain and the bundle are
// public material, 0644; each identity's directory is 0700, so only the
// agent's user (and root) reads any of them: run the gRPC process as that
// user. Every file is replaced by an atomic rename of a fully written and
// fsynced temporary file.
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
	"io/fs"
	"os"
	"path/filepath"
	"slices"
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

// Modes of the files and of each identity's directory.
const (
	KeyMode  os.FileMode = 0o600
	CertMode os.FileMode = 0o644 // the chain and the bundle
	DirMode  os.FileMode = 0o700
)

// ErrInvalidIdentity is returned for an identity name that cannot be a
// path under the files directory.
var ErrInvalidIdentity = errors.New("identity name is not usable as a path under the files directory")

// CheckIdentity accepts an identity name that is a relative path of
// non-empty segments separated by "/" (web, or team/web: a directory per
// segment), none of them "." or "..", without a backslash.
func CheckIdentity(identity string) error {
	if identity == "" || strings.Contains(identity, `\`) {
		return fmt.Errorf("%w: %q", ErrInvalidIdentity, identity)
	}
	for seg := range strings.SplitSeq(identity, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return fmt.Errorf("%w: %q", ErrInvalidIdentity, identity)
		}
	}
	return nil
}

// Paths returns where the files of identity live under dir.
func Paths(dir, identity string) (cert, key, bundle string) {
	d := filepath.Join(dir, filepath.FromSlash(identity))
	return filepath.Join(d, CertFile), filepath.Join(d, KeyFile), filepath.Join(d, BundleFile)
}

// Instance is the name of the grpc-go certificate provider instance that
// reads identity's files: the grpc bootstrap declares it, clusters and
// server listeners name it.
func Instance(identity string) string { return instancePrefix + identity }

// Write replaces identity's three files under dir, each by an atomic
// rename (KeyMode for the key, CertMode for the others), creating the
// identity's directory (DirMode) when needed. The bundle and the key are
// written before the certificate, so a reader that sees a new certificate
// finds its key and the roots it needs. An error names no key material.
func Write(dir, identity string, chainPEM, keyPEM, bundlePEM []byte) error {
	if err := CheckIdentity(identity); err != nil {
		return fmt.Errorf("agentfiles: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, filepath.FromSlash(identity)), DirMode); err != nil {
		return fmt.Errorf("agentfiles: identity %q: %w", identity, err)
	}
	cert, key, bundle := Paths(dir, identity)
	for _, f := range []struct {
		path string
		data []byte
		perm os.FileMode
	}{{bundle, bundlePEM, CertMode}, {key, keyPEM, KeyMode}, {cert, chainPEM, CertMode}} {
		if err := atomicfile.Write(f.path, f.data, f.perm); err != nil {
			return fmt.Errorf("agentfiles: identity %q: write %s: %w", identity, filepath.Base(f.path), err)
		}
	}
	return nil
}

// Remove deletes identity's directory under dir with its files, for an
// identity the node no longer holds. A missing directory is not an error.
func Remove(dir, identity string) error {
	if err := CheckIdentity(identity); err != nil {
		return fmt.Errorf("agentfiles: %w", err)
	}
	if err := os.RemoveAll(filepath.Join(dir, filepath.FromSlash(identity))); err != nil {
		return fmt.Errorf("agentfiles: identity %q: %w", identity, err)
	}
	return nil
}

// List names the identities whose files are under dir (a directory holding
// CertFile, at any depth), sorted: the identities the agent writes files
// for now, since it removes those of an identity the node lost. A missing
// dir lists none.
func List(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) && path == dir {
				return filepath.SkipDir
			}
			return err
		}
		if d.IsDir() || d.Name() != CertFile {
			return nil
		}
		rel, err := filepath.Rel(dir, filepath.Dir(path))
		if err != nil {
			return err
		}
		if name := filepath.ToSlash(rel); CheckIdentity(name) == nil {
			out = append(out, name)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("agentfiles: list %s: %w", dir, err)
	}
	slices.Sort(out)
	return out, nil
}
