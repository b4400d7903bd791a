package bench

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"path/filepath"
	"strings"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/meshca/meshca/internal/registry"
)

// EtcdTarget names an etcd cluster and the key prefix meshca keeps its
// state under. Empty Endpoints means the embedded bbolt file.
type EtcdTarget struct {
	Endpoints []string
	Prefix    string
}

// etcdPrefix is the key prefix of every section's meshca state in etcd.
const etcdPrefix = "/meshca-bench"

// workEtcd is the etcd worker: -members N etcd members (etcd v3.7's
// server/v3/embed) in this one process, each with its own data directory
// under -dir and its own loopback ports, as one cluster. Every member
// fsyncs its write-ahead log, as a production member does. It prints
// "ready endpoints=HOST:PORT,..." once the cluster has a leader, and stops
// the members when stdin closes.
func workEtcd(ctx context.Context, args []string, in io.Reader, out io.Writer) error {
	fs := flag.NewFlagSet("etcd", flag.ContinueOnError)
	members := fs.Int("members", 1, "cluster size")
	dir := fs.String("dir", "", "parent of the members' data directories")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *members < 1 || *dir == "" {
		return errors.New("etcd: -members N (≥ 1) and -dir are required")
	}
	ctx, _ = commands(ctx, in)
	w := &lines{w: out}
	cfgs := make([]*embed.Config, *members)
	var initial, endpoints []string
	for i := range cfgs {
		client, err1 := FreeAddr()
		peer, err2 := FreeAddr()
		if err := errors.Join(err1, err2); err != nil {
			return err
		}
		cfg := embed.NewConfig()
		cfg.Name = fmt.Sprintf("m%d", i)
		cfg.Dir = filepath.Join(*dir, cfg.Name)
		cfg.LogLevel = "error"
		cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
		cu, pu := url.URL{Scheme: "http", Host: client}, url.URL{Scheme: "http", Host: peer}
		cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{cu}, []url.URL{cu}
		cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{pu}, []url.URL{pu}
		cfgs[i] = cfg
		initial = append(initial, cfg.Name+"="+pu.String())
		endpoints = append(endpoints, client)
	}
	var servers []*embed.Etcd
	defer func() {
		for _, s := range servers {
			s.Close()
		}
	}()
	// Every member must be up before any can elect a leader.
	for _, cfg := range cfgs {
		cfg.InitialCluster = strings.Join(initial, ",")
		s, err := embed.StartEtcd(cfg)
		if err != nil {
			w.Printf("error etcd member %s: %v", cfg.Name, err)
			return err
		}
		servers = append(servers, s)
	}
	for _, s := range servers {
		select {
		case <-s.Server.ReadyNotify():
		case err := <-s.Err():
			w.Printf("error etcd: %v", err)
			return err
		case <-time.After(time.Minute):
			w.Printf("error etcd: no leader within a minute")
			return errors.New("etcd: no leader within a minute")
		case <-ctx.Done():
			return nil
		}
	}
	w.Printf("ready endpoints=%s", strings.Join(endpoints, ","))
	<-ctx.Done()
	return nil
}

// StartEtcd starts the etcd worker with members members under env.Dir/name
// and returns it with the cluster's client endpoints.
func StartEtcd(ctx context.Context, env *Env, name string, members int) (*Proc, []string, error) {
	p, err := StartWorker(ctx, env, "etcd", "-members", fmt.Sprint(members), "-dir", filepath.Join(env.Dir, name))
	if err != nil {
		return nil, nil, err
	}
	line, err := p.Expect("ready ", 2*time.Minute)
	if err != nil {
		p.Stop()
		return nil, nil, fmt.Errorf("etcd: %w", err)
	}
	return p, strings.Split(fields(line)["endpoints"], ","), nil
}

// runEtcdIssuance measures the issuance section's workload (AddIdentity
// in-process, 1, 8 and 64 callers) on etcd with one member and with three,
// beside the same workload on bbolt in the same run.
func runEtcdIssuance(ctx context.Context, env *Env) (*Report, error) {
	n, callers := 3000, []int{1, 8, 64}
	if env.Quick {
		n, callers = 20, []int{1, 64}
	}
	count := func(c int) int {
		if c == 1 {
			return max(n/6, 10)
		}
		return n
	}
	// durable returns the rate and, with etcd, etcd's CPU per certificate.
	durable := func(name string, target EtcdTarget, etcd *Proc, callers int) (rate, time.Duration, error) {
		reg, _, closeStore, err := openRegistry(ctx, filepath.Join(env.Dir, name), false, target)
		if err != nil {
			return rate{}, 0, err
		}
		defer closeStore()
		var etcd0, etcd1 time.Duration
		if etcd != nil {
			if etcd0, err = cpuOf(etcd.Pid()); err != nil {
				return rate{}, 0, err
			}
		}
		n := count(callers)
		r, err := measure(ctx, n, callers, func(i int) error {
			_, err := reg.AddIdentity(ctx, registry.AddIdentity{Name: fmt.Sprintf("bench-%d", i)}, "bench")
			return err
		})
		if err != nil {
			return rate{}, 0, fmt.Errorf("%s: %w", name, err)
		}
		if etcd != nil {
			if etcd1, err = cpuOf(etcd.Pid()); err != nil {
				return rate{}, 0, err
			}
		}
		perCert := (etcd1 - etcd0) / time.Duration(n)
		env.Logf("%s: %.0f certs/s, %s CPU each in this process, %s in etcd's", name, r.perSec, r.cpu, perCert)
		return r, perCert, nil
	}
	base := map[int]rate{}
	for _, c := range callers {
		r, _, err := durable(fmt.Sprintf("bbolt-%d", c), EtcdTarget{}, nil, c)
		if err != nil {
			return nil, err
		}
		base[c] = r
	}
	rep := &Report{Intro: "The issuance section's workload — `registry.AddIdentity` in-process: server-generated P-256 key, cfssl " +
		"policy and signature, zlint gate, sealed key, identity, certificate and two audit records in one commit — with meshca's " +
		"store on etcd instead of bbolt. The etcd members are etcd v3.7 (go.etcd.io/etcd/server/v3/embed) in one separate worker " +
		"process, each member with its own data directory and loopback ports, fsync on (the write-ahead log is synced " +
		"on every raft batch, as in production). Baseline: the same workload on bbolt (fsync'd group commit on a real " +
		"file) in the same run, callers for callers. meshca's CPU is the harness process's; etcd's is the worker's, read from /proc in 10 ms ticks."}
	for _, members := range []int{1, 3} {
		etcd, endpoints, err := StartEtcd(ctx, env, fmt.Sprintf("etcd-%d", members), members)
		if err != nil {
			return nil, err
		}
		for i, c := range callers {
			target := EtcdTarget{Endpoints: endpoints, Prefix: fmt.Sprintf("%s-%d", etcdPrefix, i)}
			r, etcdCPU, err := durable(fmt.Sprintf("etcd%d-%d", members, c), target, etcd, c)
			if err != nil {
				etcd.Stop()
				return nil, err
			}
			rep.Rows = append(rep.Rows, Row{
				Figure:   fmt.Sprintf("durable issuance on etcd, %s, %s", plural(members, "member"), plural(c, "caller")),
				Value:    certsPerSec(r),
				Baseline: certsPerSec(base[c]) + " (bbolt)",
				Ratio:    r.perSec / base[c].perSec,
			}, Row{
				Figure:   fmt.Sprintf("meshca's CPU per certificate on etcd, %s, %s", plural(members, "member"), plural(c, "caller")),
				Value:    micros(r.cpu),
				Baseline: micros(base[c].cpu) + " (bbolt)",
				Ratio:    float64(r.cpu) / float64(base[c].cpu),
			}, Row{
				Figure: fmt.Sprintf("etcd's CPU per certificate, %s, %s (all members)", plural(members, "member"), plural(c, "caller")),
				Value:  micros(etcdCPU),
			})
		}
		etcd.Stop()
	}
	return rep, nil
}
