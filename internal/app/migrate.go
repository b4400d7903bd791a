package app

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/config"
	"github.com/meshca/meshca/internal/seal"
	"github.com/meshca/meshca/internal/store"
)

// Migrate copies the bbolt store of cfg.DataDir into the empty etcd prefix
// of cfg.Store.Etcd and checks the copy (store.MigrateToEtcd), printing
// its progress and a summary to out. The server on cfg.DataDir must be
// stopped: its file lock keeps Migrate out.
func Migrate(ctx context.Context, cfg config.Config, out io.Writer) error {
	e := cfg.Store.Etcd
	if !e.Enabled() {
		return errors.New("no etcd endpoints: name the etcd members to copy into")
	}
	dir, err := filepath.Abs(cfg.DataDir)
	if err != nil {
		return fmt.Errorf("data_dir: %w", err)
	}
	if _, err := os.Stat(filepath.Join(dir, store.FileName)); err != nil {
		return fmt.Errorf("%s holds no meshca store (%s): nothing to migrate; check --data-dir", dir, store.FileName)
	}
	kekPath := filepath.Join(dir, KEKFile)
	if _, err := os.Stat(kekPath); err != nil {
		return fmt.Errorf("%s holds a store but no key-encryption key %s: restore it from backup first", dir, kekPath)
	}
	sealer, err := seal.LoadOrCreate(kekPath)
	if err != nil {
		return err
	}
	src, err := store.Open(store.Config{Dir: dir, Sealer: sealer, LockTimeout: cfg.Store.LockTimeout.D()})
	if errors.Is(err, store.ErrLocked) {
		return fmt.Errorf("%w: stop the meshca server that uses %s, then migrate", err, dir)
	}
	if err != nil {
		return err
	}
	defer src.Close()

	fmt.Fprintf(out, "migrating %s into etcd %s, prefix %s\n", dir, strings.Join(e.Endpoints, ","), prefixOf(e))
	progress := func(p store.MigrateProgress) {
		switch p.Step {
		case "clean":
			fmt.Fprintf(out, "  deleting the %d keys a failed migration left\n", p.Records)
		case "copy":
			fmt.Fprintf(out, "  copy     %-18s %d\n", p.Bucket, p.Records)
		case "compare":
			fmt.Fprintf(out, "  compare  %-18s %d identical\n", p.Bucket, p.Records)
		case "check":
			fmt.Fprintln(out, "  checking the store in etcd")
		}
	}
	sum, err := store.MigrateToEtcd(ctx, src, etcdConfig(e, sealer, clock.Real{}, nil, nil), progress)
	if err != nil {
		return fmt.Errorf("migration failed: %w", err)
	}
	buckets := make([]string, 0, len(sum.Records))
	for b := range sum.Records {
		buckets = append(buckets, b)
	}
	slices.Sort(buckets)
	fmt.Fprintf(out, "migrated %d records into %s, compared record by record, both stores checked:\n", sum.Total, sum.Prefix)
	for _, b := range buckets {
		fmt.Fprintf(out, "  %-18s %d\n", b, sum.Records[b])
	}
	fmt.Fprintf(out, "the audit log continues after seq %d\n", sum.LastSeq)
	fmt.Fprintf(out, "next: copy %s (mode 0600) into the data directory of every replica and start each with --etcd-endpoints %s --etcd-prefix %s\n",
		kekPath, strings.Join(e.Endpoints, ","), sum.Prefix)
	return nil
}

func prefixOf(e config.Etcd) string {
	if e.Prefix == "" {
		return store.DefaultEtcdPrefix
	}
	return e.Prefix
}
