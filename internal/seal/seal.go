// Package seal encrypts private keys before they reach the store. Keys are
// sealed with AES-256-GCM under a key-encryption key (KEK) kept in a 0600
// file in the data directory; the record's identity and serial are the
// associated data, so a sealed key moved to another record fails to open.
package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"

	"github.com/meshca/meshca/internal/atomicfile"
)

// KeySize is the length of the KEK in bytes (AES-256).
const KeySize = 32

const version byte = 1

// Sentinel errors.
var (
	ErrOpen       = errors.New("sealed data does not open: wrong key, or the record was altered or moved")
	ErrPermission = errors.New("key file permissions are too open")
	ErrKeyFile    = errors.New("invalid key-encryption key file")
)

// Sealer seals and opens small secrets. It is safe for concurrent use.
type Sealer struct {
	aead cipher.AEAD
}

// New returns a Sealer for a 32-byte KEK.
func New(kek []byte) (*Sealer, error) {
	if len(kek) != KeySize {
		return nil, fmt.Errorf("%w: %d bytes, want %d", ErrKeyFile, len(kek), KeySize)
	}
	block, err := aes.NewCipher(kek)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, fmt.Errorf("seal: %w", err)
	}
	return &Sealer{aead: aead}, nil
}

// Seal encrypts plaintext bound to aad. The result is
// version || nonce || ciphertext+tag.
func (s *Sealer) Seal(plaintext, aad []byte) ([]byte, error) {
	out := make([]byte, 1+s.aead.NonceSize(), 1+s.aead.NonceSize()+len(plaintext)+s.aead.Overhead())
	out[0] = version
	if _, err := rand.Read(out[1:]); err != nil {
		return nil, fmt.Errorf("seal: nonce: %w", err)
	}
	return s.aead.Seal(out, out[1:], plaintext, aad), nil
}

// Open decrypts what Seal produced for the same aad.
func (s *Sealer) Open(sealed, aad []byte) ([]byte, error) {
	n := s.aead.NonceSize()
	if len(sealed) < 1+n+s.aead.Overhead() || sealed[0] != version {
		return nil, ErrOpen
	}
	pt, err := s.aead.Open(nil, sealed[1:1+n], sealed[1+n:], aad)
	if err != nil {
		return nil, ErrOpen
	}
	return pt, nil
}

// LoadOrCreate reads the KEK at path, creating it with fresh random bytes
// (mode 0600, fsync'd) when it does not exist. A file readable or writable by
// group or others is refused: the error says how to fix it.
func LoadOrCreate(path string) (*Sealer, error) {
	kek, err := readKey(path)
	if errors.Is(err, fs.ErrNotExist) {
		kek = make([]byte, KeySize)
		if _, err := rand.Read(kek); err != nil {
			return nil, fmt.Errorf("seal: generate key: %w", err)
		}
		if err := atomicfile.Write(path, kek, 0o600); err != nil {
			return nil, fmt.Errorf("seal: write key-encryption key: %w", err)
		}
	} else if err != nil {
		return nil, err
	}
	return New(kek)
}

func readKey(path string) ([]byte, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	if err := CheckPrivate(path, fi.Mode()); err != nil {
		return nil, err
	}
	kek, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("seal: read key-encryption key: %w", err)
	}
	if len(kek) != KeySize {
		return nil, fmt.Errorf("%w %s: %d bytes, want %d (restore it from backup; without it sealed keys cannot be opened)", ErrKeyFile, path, len(kek), KeySize)
	}
	return kek, nil
}

// CheckPrivate refuses a file mode that lets group or others in.
func CheckPrivate(path string, mode fs.FileMode) error {
	if mode.Perm()&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; run: chmod 600 %s", ErrPermission, path, mode.Perm(), path)
	}
	return nil
}
