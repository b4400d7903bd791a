package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"github.com/cloudflare/cfssl/api/generator"
	cfconfig "github.com/cloudflare/cfssl/config"
	cflog "github.com/cloudflare/cfssl/log"
	"github.com/cloudflare/cfssl/signer/universal"
)

// cfsslNewcertPath is where `cfssl serve` mounts the newcert endpoint (its
// V1APIPrefix followed by the endpoint's name).
const cfsslNewcertPath = "/api/v1/cfssl/newcert"

// cfsslPolicy is the `cfssl serve -config` file of the baseline, kept as
// close to meshca's leaf profile as cfssl's configuration allows: 1h
// leaves, backdated a minute, for server and client auth. The key type is
// chosen per request (ECDSA P-256, as meshca generates).
const cfsslPolicy = `{
  "signing": {
    "default": {
      "usages": ["digital signature", "server auth", "client auth"],
      "expiry": "1h",
      "backdate": "1m"
    }
  }
}`

// workCFSSLServe runs cfssl's own API server with only its newcert
// endpoint, built the way `cfssl serve -ca FILE -ca-key FILE -config FILE`
// builds it: cfssl's configuration parser, its universal (here local,
// file-backed) signer and its generator handler, on the path cfssl mounts it
// at. No certificate database is configured, so nothing is stored; the
// policy sets no lint level, so nothing is linted.
//
// Args: -ca FILE (the issuing certificate alone) and -ca-key FILE. It
// prints "listening HOST:PORT" once it accepts connections and serves
// until in closes or ctx ends.
func workCFSSLServe(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("cfssl-serve", flag.ContinueOnError)
	caFile := fs.String("ca", "", "issuing CA certificate (PEM, one certificate)")
	caKeyFile := fs.String("ca-key", "", "issuing CA key (PEM)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *caFile == "" || *caKeyFile == "" {
		return errors.New("cfssl-serve: -ca and -ca-key are required")
	}
	// As quiet as meshca, which the harness runs at --log-level warn.
	cflog.Level = cflog.LevelWarning

	cfg, err := cfconfig.LoadConfig([]byte(cfsslPolicy))
	if err != nil {
		return fmt.Errorf("cfssl-serve: policy: %w", err)
	}
	s, err := universal.NewSigner(universal.Root{Config: map[string]string{"cert-file": *caFile, "key-file": *caKeyFile}}, cfg.Signing)
	if err != nil {
		return fmt.Errorf("cfssl-serve: signer: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle(cfsslNewcertPath, generator.NewCertGeneratorHandlerFromSigner(generator.CSRValidate, s))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("cfssl-serve: %w", err)
	}
	// cfssl serve uses http.ListenAndServe: no timeouts but the header one
	// added here, which no benchmark request comes near.
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	if _, err := fmt.Fprintf(out, "listening %s\n", ln.Addr()); err != nil {
		return err
	}

	stdinClosed := make(chan struct{})
	go func() {
		_, _ = io.Copy(io.Discard, in)
		close(stdinClosed)
	}()
	select {
	case err := <-errc:
		return fmt.Errorf("cfssl-serve: %w", err)
	case <-stdinClosed:
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return srv.Shutdown(sctx)
}
