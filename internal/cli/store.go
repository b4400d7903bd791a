package cli

import (
	"errors"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/config"
)

func storeCmd(cfg Config) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "store",
		Short: "Operate on meshca's state directly (the server must be stopped)",
	}
	cmd.AddCommand(storeMigrateCmd(cfg))
	return cmd
}

func storeMigrateCmd(cfg Config) *cobra.Command {
	var (
		file  string
		flags config.Config
	)
	cmd := &cobra.Command{
		Use:   "migrate --data-dir DIR --etcd-endpoints HOST:PORT[,HOST:PORT...] [--etcd-prefix /meshca]",
		Short: "Copy a stopped server's data directory into an empty etcd prefix, and check the copy",
		Long: `Copy every record of the data directory's bbolt store into an empty etcd
prefix, as they are (private keys stay sealed with the kek of the data
directory), then compare the copy record by record and check both stores.
Stop the server first. Nothing is left in etcd if the migration fails.
Afterwards start every replica with --etcd-endpoints and a data directory
holding a copy of the same kek file.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := config.Default()
			if file != "" {
				var err error
				if c, err = config.Load(file); err != nil {
					return err
				}
			}
			if cmd.Flags().Changed("data-dir") {
				c.DataDir = flags.DataDir
			}
			if cmd.Flags().Changed("etcd-endpoints") {
				c.Store.Etcd.Endpoints = flags.Store.Etcd.Endpoints
			}
			if cmd.Flags().Changed("etcd-prefix") {
				c.Store.Etcd.Prefix = flags.Store.Etcd.Prefix
			}
			if !c.Store.Etcd.Enabled() {
				return errors.New("--etcd-endpoints is required: the etcd members to copy into")
			}
			if err := c.Validate(); err != nil {
				return err
			}
			if cfg.Migrate == nil {
				return errors.New("this build has no store migration")
			}
			return cfg.Migrate(cmd.Context(), c, cmd.OutOrStdout())
		},
	}
	d := config.Default()
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "the server's YAML config file (store.etcd.tls, dial_timeout); flags override it")
	f.StringVar(&flags.DataDir, "data-dir", d.DataDir, "the data directory to copy (meshca.db and kek)")
	etcdFlags(cmd, &flags.Store.Etcd)
	return cmd
}
