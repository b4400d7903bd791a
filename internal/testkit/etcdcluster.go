package testkit

import (
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// EtcdCluster is an embedded etcd cluster of several members in this
// process, each on its own free loopback client and peer ports with its
// data in the test's temporary directory. Members stop and restart one by
// one, so that a test can take the cluster below quorum and back. Every
// member is stopped when the test ends.
//
// Clients reach each member through a Proxy (Endpoints). Stop cuts the
// member's client connections before it stops the member, as a crash
// does: a member stopped with its clients' watches open would wait for
// them (etcd's graceful stop, about 7s) while still answering.
//
// Like StartEtcd, its members run with UnsafeNoFsync: a write etcd
// acknowledged is on a quorum of members' memory and logs, not on their
// disks. Tests on it prove what survives the loss of members (a stopped
// member's state is kept; a restarted one catches up from the others), not
// what survives a power cut of the whole cluster.
//
// Members elect a leader within memberElection (etcd's default is a
// second, for members across a network): starting the cluster, and a
// member returning to a cluster without quorum, each wait for an election.
// All members share this process, so a loaded machine slows the
// heartbeats and the election timers alike.
type EtcdCluster struct {
	tb      testing.TB
	members []*Etcd
	proxies []*Proxy // in front of each member's client port
}

// The members' heartbeat and election timeout: half of etcd's defaults,
// in the same ratio (an election after ten missed heartbeats).
const (
	memberHeartbeat = 50 * time.Millisecond
	memberElection  = 500 * time.Millisecond
)

// StartEtcdCluster starts a cluster of n members (n >= 1) and waits until
// every member is ready.
func StartEtcdCluster(tb testing.TB, n int) *EtcdCluster {
	tb.Helper()
	if n < 1 {
		tb.Fatalf("an etcd cluster of %d members", n)
	}
	dir := tb.TempDir()
	var lastErr error
	// A port found free can be taken before etcd binds it: try again on
	// new ports.
	for attempt := range 5 {
		c := &EtcdCluster{tb: tb}
		var peers []string
		for i := range n {
			client, peer := "127.0.0.1:"+FreePort(tb), "127.0.0.1:"+FreePort(tb)
			cfg := embed.NewConfig()
			cfg.Name = fmt.Sprintf("m%d", i)
			cfg.Dir = filepath.Join(dir, fmt.Sprint(attempt), cfg.Name)
			cfg.LogLevel = "error"
			cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
			cu, pu := url.URL{Scheme: "http", Host: client}, url.URL{Scheme: "http", Host: peer}
			cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
			cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
			cfg.InitialClusterToken = fmt.Sprintf("meshca-test-%d", attempt)
			cfg.UnsafeNoFsync = true
			cfg.TickMs, cfg.ElectionMs = uint(memberHeartbeat/time.Millisecond), uint(memberElection/time.Millisecond)
			peers = append(peers, cfg.Name+"="+pu.String())
			c.members = append(c.members, &Etcd{Endpoint: client, tb: tb, cfg: cfg})
		}
		for _, m := range c.members {
			m.cfg.InitialCluster = strings.Join(peers, ",")
		}
		// A member is ready only once a quorum has formed: start them all
		// before waiting for any.
		errs := make(chan error, n)
		for _, m := range c.members {
			go func() { errs <- m.start() }()
		}
		var failed error
		for range n {
			if err := <-errs; err != nil && failed == nil {
				failed = err
			}
		}
		if failed == nil {
			for _, m := range c.members {
				c.proxies = append(c.proxies, StartProxy(tb, m.Endpoint))
			}
			tb.Cleanup(c.stopAll)
			return c
		}
		c.stopAll()
		lastErr = failed
	}
	tb.Fatalf("embedded etcd cluster: %v", lastErr)
	return nil
}

// Size is the number of members, running or not.
func (c *EtcdCluster) Size() int { return len(c.members) }

// Member returns member i (0 <= i < Size).
func (c *EtcdCluster) Member(i int) *Etcd { return c.members[i] }

// Endpoints are the addresses, HOST:PORT, through which clients reach
// every member, running or not: what meshca is configured with.
func (c *EtcdCluster) Endpoints() []string {
	out := make([]string, len(c.proxies))
	for i, p := range c.proxies {
		out[i] = p.Addr
	}
	return out
}

// Stop cuts member i's client connections and stops it; its data stays
// for Restart. When it leads, it hands leadership to another member
// first.
func (c *EtcdCluster) Stop(i int) {
	c.proxies[i].Cut()
	c.members[i].Stop()
}

// Restart starts the stopped member i again on its ports and data, waits
// until it is ready, which needs a quorum of members running with it, and
// lets clients reach it again. It fails the test after 30s.
func (c *EtcdCluster) Restart(i int) {
	c.tb.Helper()
	c.members[i].Restart()
	c.proxies[i].Restore()
}

// Client is a plain etcd client of every member, reaching them directly
// (not through the proxies), for looking at etcd behind meshca's back;
// closed when the test ends.
func (c *EtcdCluster) Client() *clientv3.Client {
	c.tb.Helper()
	direct := make([]string, len(c.members))
	for i, m := range c.members {
		direct[i] = m.Endpoint
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: direct, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		c.tb.Fatal(err)
	}
	c.tb.Cleanup(func() { cli.Close() })
	return cli
}

// stopAll stops every member: the followers at once, then the leader,
// which then has no one to hand leadership to and stops without waiting
// for a transfer that cannot happen.
func (c *EtcdCluster) stopAll() {
	for _, p := range c.proxies {
		p.Cut()
	}
	var leaders, followers []*Etcd
	for _, m := range c.members {
		if m.srv != nil && m.srv.Server.Leader() == m.srv.Server.MemberID() {
			leaders = append(leaders, m)
		} else {
			followers = append(followers, m)
		}
	}
	for _, group := range [][]*Etcd{followers, leaders} {
		done := make(chan struct{}, len(group))
		for _, m := range group {
			go func() {
				m.Stop()
				done <- struct{}{}
			}()
		}
		for range group {
			<-done
		}
	}
}

// Running reports whether member i runs.
func (c *EtcdCluster) Running(i int) bool { return c.members[i].srv != nil }
