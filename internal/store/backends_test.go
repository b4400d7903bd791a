package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/meshca/meshca/internal/clock"
	"github.com/meshca/meshca/internal/store"
)

// One embedded etcd member serves every etcd test of the package run; each
// test works under a prefix of its own.
var (
	etcdOnce     sync.Once
	etcdServer   *embed.Etcd
	etcdEndpoint string
	// etcdTLSEndpoint is the member's TLS listener, which requires a
	// client certificate (files in etcdTLS).
	etcdTLSEndpoint string
	etcdErr         error
	etcdDir         string
	prefixSeq       atomic.Uint64
)

func TestMain(m *testing.M) {
	code := m.Run()
	if etcdServer != nil {
		etcdServer.Close()
	}
	if etcdDir != "" {
		os.RemoveAll(etcdDir)
	}
	os.Exit(code)
}

// freePort returns a loopback port nothing listens on now.
func freePort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

func startEtcd() error {
	dir, err := os.MkdirTemp("", "meshca-store-etcd-")
	if err != nil {
		return err
	}
	etcdDir = dir
	if etcdTLS, err = writeTLSFiles(dir); err != nil {
		return err
	}
	// A port found free can be taken before etcd binds it: try again.
	for attempt := range 5 {
		client, err1 := freePort()
		peer, err2 := freePort()
		secure, err3 := freePort()
		if err := errors.Join(err1, err2, err3); err != nil {
			return err
		}
		cfg := embed.NewConfig()
		cfg.Dir = filepath.Join(dir, fmt.Sprint(attempt))
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cu, pu := url.URL{Scheme: "http", Host: client}, url.URL{Scheme: "http", Host: peer}
		su := url.URL{Scheme: "https", Host: secure}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu, su}, []url.URL{cu, su}
		cfg.ClientTLSInfo.CertFile, cfg.ClientTLSInfo.KeyFile = etcdTLS.serverCert, etcdTLS.serverKey
		cfg.ClientTLSInfo.TrustedCAFile, cfg.ClientTLSInfo.ClientCertAuth = etcdTLS.ca, true
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfg.InitialCluster = cfg.Name + "=" + pu.String()
		// The tests prove transactions, not fsync: skip it to keep the
		// package fast on a loaded machine.
		cfg.UnsafeNoFsync = true
		e, err := embed.StartEtcd(cfg)
		if err != nil {
			continue
		}
		select {
		case <-e.Server.ReadyNotify():
			etcdServer, etcdEndpoint, etcdTLSEndpoint = e, client, secure
			return nil
		case err := <-e.Err():
			e.Close()
			return err
		case <-time.After(30 * time.Second):
			e.Close()
			return errors.New("embedded etcd not ready within 30s")
		}
	}
	return errors.New("embedded etcd: no free ports after 5 attempts")
}

// etcdEndpointFor starts the package's etcd member on first use, or uses
// the etcd named by MESHCA_TEST_ETCD (HOST:PORT), to run the suite against
// another etcd version, such as a packaged daemon.
func etcdEndpointFor(t testing.TB) string {
	t.Helper()
	etcdOnce.Do(func() {
		if ep := os.Getenv("MESHCA_TEST_ETCD"); ep != "" {
			etcdEndpoint = ep
			return
		}
		etcdErr = startEtcd()
	})
	if etcdErr != nil {
		t.Fatalf("embedded etcd: %v", etcdErr)
	}
	return etcdEndpoint
}

// etcdClient is a plain client of the package's member, for tests that look
// at or change etcd behind the store's back.
func etcdClient(t testing.TB) *clientv3.Client {
	t.Helper()
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{etcdEndpointFor(t)},
		DialTimeout: 5 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cli.Close() })
	return cli
}

// runID keeps the prefixes of two runs against one external etcd apart.
var runID = time.Now().UnixNano()

func newPrefix(t testing.TB) string {
	return fmt.Sprintf("/test/%d/%d", runID, prefixSeq.Add(1))
}

// etcdConfig is the configuration of an etcd store for the tests: the same
// KEK and fake clock as config.
func etcdConfig(t testing.TB, prefix string) store.EtcdConfig {
	return store.EtcdConfig{
		Endpoints: []string{etcdEndpointFor(t)},
		Prefix:    prefix,
		Sealer:    newSealer(t, 0x42),
		Clock:     clock.NewFake(t0),
	}
}

func openEtcd(t testing.TB, cfg store.EtcdConfig) *store.Store {
	t.Helper()
	s, err := store.OpenEtcd(cfg)
	if err != nil {
		t.Fatalf("OpenEtcd: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// backend is one implementation of the store contract.
type backend struct {
	name string
	// place makes a new, empty location and returns a function that opens
	// it (again) with a KEK filled with kek.
	place func(t *testing.T) func(t *testing.T, kek byte) (*store.Store, error)
	// raw returns every byte the location holds, after the store that
	// used it was closed.
	raw func(t *testing.T, s *store.Store, where string) []byte
}

var backends = []backend{
	{
		name: "bbolt",
		place: func(t *testing.T) func(*testing.T, byte) (*store.Store, error) {
			dir := filepath.Join(t.TempDir(), "data")
			return func(t *testing.T, kek byte) (*store.Store, error) {
				cfg := config(t, dir)
				cfg.Sealer = newSealer(t, kek)
				return store.Open(cfg)
			}
		},
		raw: func(t *testing.T, s *store.Store, _ string) []byte {
			b, err := os.ReadFile(s.Path())
			if err != nil {
				t.Fatal(err)
			}
			return b
		},
	},
	{
		name: "etcd",
		place: func(t *testing.T) func(*testing.T, byte) (*store.Store, error) {
			prefix := newPrefix(t)
			return func(t *testing.T, kek byte) (*store.Store, error) {
				cfg := etcdConfig(t, prefix)
				cfg.Sealer = newSealer(t, kek)
				return store.OpenEtcd(cfg)
			}
		},
		raw: func(t *testing.T, _ *store.Store, _ string) []byte {
			// Every key and value in etcd, of every test: a superset.
			resp, err := etcdClient(t).Get(context.Background(), "", clientv3.WithFromKey())
			if err != nil {
				t.Fatal(err)
			}
			var b bytes.Buffer
			for _, kv := range resp.Kvs {
				b.Write(kv.Key)
				b.Write(kv.Value)
			}
			return b.Bytes()
		},
	},
}

// contract runs test against every backend, each on a fresh location.
func contract(t *testing.T, test func(t *testing.T, b backend, open func(t *testing.T) *store.Store)) {
	for _, b := range backends {
		t.Run(b.name, func(t *testing.T) {
			place := b.place(t)
			test(t, b, func(t *testing.T) *store.Store {
				t.Helper()
				s, err := place(t, 0x42)
				if err != nil {
					t.Fatalf("open %s: %v", b.name, err)
				}
				t.Cleanup(func() { s.Close() })
				return s
			})
		})
	}
}

// cutProxy forwards loopback TCP connections to target until cut: then it
// closes every connection and refuses new ones until restored.
type cutProxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{l: l, target: target, conns: map[net.Conn]struct{}{}}
	p.wg.Add(1)
	go p.serve()
	t.Cleanup(func() {
		l.Close()
		p.setCut(true)
		p.wg.Wait()
	})
	return p
}

func (p *cutProxy) addr() string { return p.l.Addr().String() }

func (p *cutProxy) serve() {
	defer p.wg.Done()
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		if !p.track(c) {
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil || !p.track(up) {
			c.Close()
			if up != nil {
				up.Close()
			}
			continue
		}
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *cutProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cut {
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *cutProxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
}

// setCut closes every open connection when cutting.
func (p *cutProxy) setCut(cut bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = cut
	if cut {
		for c := range p.conns {
			c.Close()
		}
		clear(p.conns)
	}
}
