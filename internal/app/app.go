// Package app is meshca's composition root: it builds every part from the
// configuration, wires the concrete types into the interfaces their
// consumers declare, and runs them until the context ends.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/meshca/meshca/ca"
	"github.com/meshca/meshca/internal/admin"
	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/identity"
	"github.com/meshca/meshca/internal/registry"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// KEKFile is the name of the key-encryption key in the data directory.
const KEKFile = "kek"

// serverCertTTL is the lifetime of meshca's own TLS server certificate; it is
// renewed at half of it.
const serverCertTTL = 24 * time.Hour

// Run starts meshca on cfg and blocks until ctx is done or a part fails.
// A cancelled ctx is a clean stop: in-flight admin requests finish, then the
// store is closed.
func Run(ctx context.Context, cfg config.Config, logger *slog.Logger) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	td, err := identity.TrustDomain(cfg.TrustDomain)
	if err != nil {
		return fmt.Errorf("trust_domain: %w", err)
	}
	keyAlg, err := ca.ParseKeyAlgorithm(cfg.CA.KeyAlgorithm)
	if err != nil {
		return fmt.Errorf("ca.key_algorithm: %w", err)
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	kekPath := filepath.Join(dir, KEKFile)
	if err := kekPresent(dir, kekPath); err != nil {
		return err
	}
	sealer, err := seal.LoadOrCreate(kekPath)
	if err != nil {
		return err
	}
	st, err := store.Open(store.Config{
		Dir: dir, Sealer: sealer, LockTimeout: cfg.Store.LockTimeout.D(), Logger: logger,
	})
	if err != nil {
		return err
	}
	defer func() {
		if cerr := st.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("close store: %w", cerr)
		}
	}()

	reg, err := registry.New(ctx, registry.Config{
		Store: st, TrustDomain: td, KeyAlgorithm: keyAlg,
		RootTTL: cfg.CA.RootTTL.D(), IntermediateTTL: cfg.CA.IntermediateTTL.D(),
		DefaultTTL: cfg.CA.DefaultLeafTTL.D(), Clock: clock.Real{}, Logger: logger,
	})
	if err != nil {
		return err
	}
	adm, err := admin.New(admin.Config{
		Identities: reg, CSRSigner: reg, Authority: reg, Audit: reg, TrustDomain: td.Name(), Logger: logger,
	})
	if err != nil {
		return err
	}

	var mtls *tls.Config
	mtlsConfig := func() (*tls.Config, error) {
		if mtls == nil {
			sc, err := reg.ServerCert(cfg.Admin.DNSNames, serverCertTTL)
			if err != nil {
				return nil, fmt.Errorf("admin.dns_names: %w", err)
			}
			mtls = admin.MTLS(reg, reg, sc.Get)
		}
		return mtls, nil
	}
	var (
		runs      []func(context.Context) error
		listeners []net.Listener
		tlsCfgs   []*tls.Config
		attrs     = []any{"data_dir", dir, "trust_domain", td.Name()}
	)
	defer func() {
		if err != nil { // listeners whose server never started
			for _, ln := range listeners[len(runs):] {
				ln.Close()
			}
		}
	}()
	for _, l := range []struct {
		key, addr string
		forceTLS  bool
	}{
		{"admin", cfg.Admin.Listen, false},
		{"admin_mtls", cfg.Admin.MTLSListen, true},
	} {
		if l.addr == "" {
			continue
		}
		var tlsCfg *tls.Config
		if l.forceTLS || !isLoopback(l.addr) {
			if tlsCfg, err = mtlsConfig(); err != nil {
				return err
			}
		}
		tlsCfgs = append(tlsCfgs, tlsCfg)
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return fmt.Errorf("%s listen %s: %w", l.key, l.addr, err)
		}
		listeners = append(listeners, ln)
		attrs = append(attrs, l.key, ln.Addr().String())
	}
	for i, ln := range listeners {
		tlsCfg := tlsCfgs[i]
		runs = append(runs, func(ctx context.Context) error { return adm.Run(ctx, ln, tlsCfg) })
	}
	issuer := reg.CA().Issuer()
	attrs = append(attrs, "issuer_serial", fmt.Sprintf("%x", issuer.SerialNumber), "issuer_not_after", issuer.NotAfter)
	logger.Info("meshca started", attrs...)
	err = runGroup(ctx, runs)
	logger.Info("meshca stopped")
	return err
}

// kekPresent refuses to start on an existing store whose key-encryption key
// is gone: creating a new one would leave every sealed key unreadable.
func kekPresent(dir, kekPath string) error {
	if _, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil {
		return nil // no store yet: the key is created with it
	}
	if _, err := os.Stat(kekPath); errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("%s holds a store but its key-encryption key %s is missing: restore it from backup (without it no private key in the store can be opened)", dir, kekPath)
	}
	return nil
}

// runGroup runs every function until ctx is done or one fails; a failure
// stops the others. A cancelled ctx is a clean exit.
func runGroup(ctx context.Context, runs []func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errc := make(chan error, len(runs))
	for _, run := range runs {
		go func() { errc <- run(ctx) }()
	}
	var first error
	for range runs {
		if err := <-errc; err != nil && !errors.Is(err, context.Canceled) && first == nil {
			first = err
			cancel()
		}
	}
	return first
}

func isLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}
