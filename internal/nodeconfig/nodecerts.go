package nodeconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/meshca/meshca/internal/store"
)

// Closer ends connections; the xDS server implements it. It must never
// call back into the CertWatch.
type Closer interface {
	// CloseNodeExcept closes node's connections made with a node
	// certificate whose serial is not in keep, and returns how many.
	CloseNodeExcept(node string, keep ...string) int
}

// CertWatchConfig configures a CertWatch.
type CertWatchConfig struct {
	Store  *store.Store // required
	Closer Closer       // required
	Logger *slog.Logger
}

// CertWatch ends the connections a node made with node certificates it no
// longer uses: after it joined again (its earlier certificates revoked) or
// switched to its renewed certificate on first use, the node's record
// names another certificate, and connections made with the others are
// closed. It follows the change feed, so a change committed through any
// replica closes the connections on every replica that runs one.
type CertWatch struct {
	cfg CertWatchConfig
	log *slog.Logger
	sub *store.Subscription
}

// NewCertWatch validates cfg and subscribes to the store's feed: every
// change committed from now on is seen.
func NewCertWatch(cfg CertWatchConfig) (*CertWatch, error) {
	if cfg.Store == nil || cfg.Closer == nil {
		return nil, errors.New("nodeconfig: CertWatch needs Store and Closer")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &CertWatch{cfg: cfg, log: cfg.Logger, sub: cfg.Store.Subscribe(0)}, nil
}

// Run follows the feed until ctx ends; it returns nil then.
func (w *CertWatch) Run(ctx context.Context) error {
	defer w.sub.Close()
	for {
		b, err := w.sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return nil
			}
			return fmt.Errorf("nodeconfig: node certificates: feed: %w", err)
		}
		var names []string
		for _, c := range b.Changes {
			if c.Kind == store.KindNode {
				names = append(names, c.Key)
			}
		}
		if err := w.check(ctx, names, b.Resync); err != nil && ctx.Err() == nil {
			// Connections made with a replaced certificate stay open
			// until the node's next change: say so.
			w.log.Error("node certificates not checked; connections made with replaced ones may stay open until the node changes again", logErr, err)
		}
	}
}

// check closes, for each node named (every node with all), the
// connections not made with the certificate in use or the renewed one not
// used yet. A node that is gone or revoked is left to the Builder, whose
// RemoveNode closes everything.
func (w *CertWatch) check(ctx context.Context, names []string, all bool) error {
	var nodes []store.Node
	err := w.cfg.Store.View(ctx, func(tx *store.Tx) error {
		nodes = nodes[:0]
		if all {
			var err error
			nodes, err = tx.Nodes()
			return err
		}
		for _, name := range names {
			n, err := tx.Node(name)
			if errors.Is(err, store.ErrNotFound) {
				continue
			}
			if err != nil {
				return err
			}
			nodes = append(nodes, n)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, n := range nodes {
		if n.State != store.StateActive || n.CertSerial == "" {
			continue
		}
		keep := []string{n.CertSerial}
		if n.NextSerial != "" {
			keep = append(keep, n.NextSerial)
		}
		if closed := w.cfg.Closer.CloseNodeExcept(n.Name, keep...); closed > 0 {
			w.log.Info("closed connections made with a node certificate the node no longer uses", logNode, n.Name, "connections", closed, "serial", n.CertSerial)
		}
	}
	return nil
}
