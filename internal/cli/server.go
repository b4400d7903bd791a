package cli

import (
	"errors"
	"fmt"
	"io"
	"log/slog"

	"github.com/spf13/cobra"

	"github.com/meshca/meshca/internal/config"
)

func serverCmd(cfg Config) *cobra.Command {
	var (
		file  string
		flags config.Config
	)
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the CA and control plane (defaults: data in ./meshca-data, admin API on 127.0.0.1:8000)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c := config.Default()
			if file != "" {
				var err error
				if c, err = config.Load(file); err != nil {
					return err
				}
			}
			// Flags given on the command line win over the file.
			set := func(name string, dst *string, v string) {
				if cmd.Flags().Changed(name) {
					*dst = v
				}
			}
			set("data-dir", &c.DataDir, flags.DataDir)
			set("trust-domain", &c.TrustDomain, flags.TrustDomain)
			set("admin-listen", &c.Admin.Listen, flags.Admin.Listen)
			set("admin-mtls-listen", &c.Admin.MTLSListen, flags.Admin.MTLSListen)
			set("xds-listen", &c.XDS.Listen, flags.XDS.Listen)
			set("xds-advertise", &c.XDS.Advertise, flags.XDS.Advertise)
			set("log-format", &c.Log.Format, flags.Log.Format)
			set("log-level", &c.Log.Level, flags.Log.Level)
			if cmd.Flags().Changed("etcd-endpoints") {
				c.Store.Etcd.Endpoints = flags.Store.Etcd.Endpoints
			}
			set("etcd-prefix", &c.Store.Etcd.Prefix, flags.Store.Etcd.Prefix)
			if err := c.Validate(); err != nil {
				return err
			}
			if cfg.Server == nil {
				return errors.New("this build has no server")
			}
			log, err := newLogger(cmd.ErrOrStderr(), c.Log)
			if err != nil {
				return err
			}
			return cfg.Server(cmd.Context(), c, log)
		},
	}
	d := config.Default()
	f := cmd.Flags()
	f.StringVar(&file, "config", "", "YAML config file (flags override its values)")
	f.StringVar(&flags.DataDir, "data-dir", d.DataDir, "data directory (bbolt file, key-encryption key)")
	f.StringVar(&flags.TrustDomain, "trust-domain", d.TrustDomain, "SPIFFE trust domain")
	f.StringVar(&flags.Admin.Listen, "admin-listen", d.Admin.Listen, "admin API listen address (non-loopback requires mTLS)")
	f.StringVar(&flags.Admin.MTLSListen, "admin-mtls-listen", "", "optional second admin API address that always requires mTLS (for remote operators)")
	f.StringVar(&flags.XDS.Listen, "xds-listen", d.XDS.Listen, "xDS gRPC listen address")
	f.StringVar(&flags.XDS.Advertise, "xds-advertise", "", "xDS address nodes use to reach this replica, host:port (required on etcd when --xds-listen is on every address)")
	f.StringVar(&flags.Log.Format, "log-format", d.Log.Format, "log format: text or json")
	f.StringVar(&flags.Log.Level, "log-level", d.Log.Level, "log level: debug, info, warn or error")
	etcdFlags(cmd, &flags.Store.Etcd)
	return cmd
}

// etcdFlags adds --etcd-endpoints and --etcd-prefix, which `server` and
// `store migrate` share.
func etcdFlags(cmd *cobra.Command, e *config.Etcd) {
	f := cmd.Flags()
	f.StringSliceVar(&e.Endpoints, "etcd-endpoints", nil, "keep the state in etcd: HOST:PORT[,HOST:PORT...] of its members (TLS and timeouts: store.etcd in --config)")
	f.StringVar(&e.Prefix, "etcd-prefix", config.DefaultEtcdPrefix, "etcd key prefix of this meshca installation")
}

func newLogger(w io.Writer, c config.Log) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		return nil, fmt.Errorf("log.level %q: use debug, info, warn or error", c.Level)
	}
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return slog.New(slog.NewTextHandler(w, opts)), nil
}
