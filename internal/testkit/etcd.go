package testkit

import (
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// Etcd is one embedded etcd member on free loopback ports, with its data in
// the test's temporary directory. It is stopped when the test ends.
type Etcd struct {
	// Endpoint is the member's client address, HOST:PORT.
	Endpoint string

	tb   testing.TB
	cfg  *embed.Config
	srv  *embed.Etcd
	runs int
}

// StartEtcd starts an embedded etcd member for tb. It skips fsync: tests
// prove behaviour, not durability.
func StartEtcd(tb testing.TB) *Etcd {
	tb.Helper()
	dir := tb.TempDir()
	var lastErr error
	// A port found free can be taken before etcd binds it: try again.
	for attempt := range 5 {
		client, peer := "127.0.0.1:"+FreePort(tb), "127.0.0.1:"+FreePort(tb)
		cfg := embed.NewConfig()
		cfg.Dir = filepath.Join(dir, fmt.Sprint(attempt))
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cu, pu := url.URL{Scheme: "http", Host: client}, url.URL{Scheme: "http", Host: peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
		cfg.UnsafeNoFsync = true
		e := &Etcd{Endpoint: client, tb: tb, cfg: cfg}
		if lastErr = e.start(); lastErr == nil {
			tb.Cleanup(e.Stop)
			return e
		}
	}
	tb.Fatalf("embedded etcd: %v", lastErr)
	return nil
}

func (e *Etcd) start() error {
	if e.runs > 0 {
		e.cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	srv, err := embed.StartEtcd(e.cfg)
	if err != nil {
		return err
	}
	select {
	case <-srv.Server.ReadyNotify():
		e.srv = srv
		e.runs++
		return nil
	case err := <-srv.Err():
		srv.Close()
		return err
	case <-time.After(30 * time.Second):
		srv.Close()
		return errors.New("not ready within 30s")
	}
}

// Stop stops the member; its data stays for Restart. Stopping a stopped
// member does nothing.
func (e *Etcd) Stop() {
	if e.srv != nil {
		e.srv.Close()
		e.srv = nil
	}
}

// Restart starts a stopped member again on the same ports and data.
func (e *Etcd) Restart() {
	e.tb.Helper()
	if e.srv != nil {
		return
	}
	if err := e.start(); err != nil {
		e.tb.Fatalf("restart embedded etcd: %v", err)
	}
}

// Client is a plain etcd client of the member, for looking at or changing
// etcd behind meshca's back; closed when the test ends.
func (e *Etcd) Client() *clientv3.Client {
	e.tb.Helper()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		e.tb.Fatal(err)
	}
	e.tb.Cleanup(func() { cli.Close() })
	return cli
}
