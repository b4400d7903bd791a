package nodeconfig

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/meshca/meshca/internal/store"
)

// AgentNotifier tells node agents that what they hold may have changed;
// the xDS server implements it (its WatchIdentities streams read the
// node's identities again and send what changed). Its methods must not
// block and must never call back into the AgentWatch.
type AgentNotifier interface {
	// AgentsChanged names nodes whose record, or an identity they hold,
	// changed.
	AgentsChanged(nodes ...string)
	// AllAgentsChanged says that every agent may be affected: the CA set
	// changed (meshca may issue from another CA), or changes were lost
	// (a feed resync).
	AllAgentsChanged()
}

// AgentWatchConfig configures an AgentWatch.
type AgentWatchConfig struct {
	Store    *store.Store  // required
	Notifier AgentNotifier // required
	Logger   *slog.Logger
}

// AgentWatch follows the change feed for the node agents: a node's record
// (an identity assigned or unassigned, selectors changed, the node revoked)
// names that node; an identity or a revocation names the agent nodes that
// hold the identity; a switch of the CA set's issuer names every agent. It
// keeps its own index
// of agent nodes and their identities, read from the store, so that an
// identity change costs a map lookup. Every replica runs one: a change
// through one replica reaches the agents connected to any.
type AgentWatch struct {
	cfg AgentWatchConfig
	log *slog.Logger
	sub *store.Subscription

	// Owned by Run's goroutine.
	holders map[string]map[string]bool // identity -> agent nodes holding it
	held    map[string][]string        // agent node -> its identities
	issuer  string                     // the CA set's issuer, as last read
}

// NewAgentWatch validates cfg and subscribes to the store's feed: every
// change committed from now on is seen.
func NewAgentWatch(cfg AgentWatchConfig) (*AgentWatch, error) {
	if cfg.Store == nil || cfg.Notifier == nil {
		return nil, errors.New("nodeconfig: AgentWatch needs Store and Notifier")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &AgentWatch{cfg: cfg, log: cfg.Logger, sub: cfg.Store.Subscribe(0),
		holders: map[string]map[string]bool{}, held: map[string][]string{}}, nil
}

// Run follows the feed until ctx ends; it returns nil then.
func (w *AgentWatch) Run(ctx context.Context) error {
	defer w.sub.Close()
	if err := w.index(ctx, nil, true); err != nil && ctx.Err() == nil {
		return fmt.Errorf("nodeconfig: agent nodes: %w", err)
	}
	if _, err := w.issuerSwitched(ctx); err != nil && ctx.Err() == nil {
		return fmt.Errorf("nodeconfig: agent nodes: CA set: %w", err)
	}
	for {
		b, err := w.sub.Next(ctx)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, store.ErrClosed) {
				return nil
			}
			return fmt.Errorf("nodeconfig: agent nodes: feed: %w", err)
		}
		if b.Resync {
			if err := w.index(ctx, nil, true); err != nil && ctx.Err() == nil {
				w.log.Error("agent nodes not read after a feed resync; agents learn their changes at their next poll", logErr, err)
			}
			w.cfg.Notifier.AllAgentsChanged()
			continue
		}
		var (
			nodes, names []string
			all          bool
		)
		for _, c := range b.Changes {
			switch c.Kind {
			case store.KindNode:
				names = append(names, c.Key)
			case store.KindIdentity, store.KindRevocation:
				for n := range w.holders[c.Identity] {
					nodes = append(nodes, n)
				}
			case store.KindCA:
				all = all || c.Key == "" // the CA set: the issuer may have switched
			}
		}
		if all {
			// Most changes of the set are steps of a rotation: only a
			// switch of issuer concerns every agent.
			switched, err := w.issuerSwitched(ctx)
			if err != nil && ctx.Err() == nil {
				w.log.Error("CA set not read; telling every agent", logErr, err)
			}
			all = switched || err != nil
		}
		if len(names) > 0 {
			if err := w.index(ctx, names, false); err != nil && ctx.Err() == nil {
				// Still tell them: their streams read the store themselves.
				w.log.Error("agent nodes not read; the index is refreshed at their next change", logErr, err)
			}
			nodes = append(nodes, names...)
		}
		if all {
			w.cfg.Notifier.AllAgentsChanged()
		} else if len(nodes) > 0 {
			w.cfg.Notifier.AgentsChanged(nodes...)
		}
	}
}

// issuerSwitched reads the CA set's issuer and reports whether it differs
// from the one read before.
func (w *AgentWatch) issuerSwitched(ctx context.Context) (bool, error) {
	var issuer string
	err := w.cfg.Store.View(ctx, func(tx *store.Tx) error {
		set, err := tx.CASet()
		if errors.Is(err, store.ErrNotFound) {
			return nil
		}
		issuer = set.IssuerSerial
		return err
	})
	if err != nil {
		return false, err
	}
	switched := issuer != w.issuer
	w.issuer = issuer
	return switched, nil
}

// index reads the named nodes (every node with all) and keeps the agent
// nodes among them with their identities.
func (w *AgentWatch) index(ctx context.Context, names []string, all bool) error {
	current := map[string][]string{} // node -> identities; nil: not an active agent node
	err := w.cfg.Store.View(ctx, func(tx *store.Tx) error {
		clear(current)
		var nodes []store.Node
		if all {
			var err error
			if nodes, err = tx.Nodes(); err != nil {
				return err
			}
		} else {
			for _, name := range names {
				n, err := tx.Node(name)
				if errors.Is(err, store.ErrNotFound) {
					current[name] = nil
					continue
				}
				if err != nil {
					return err
				}
				nodes = append(nodes, n)
			}
		}
		for _, n := range nodes {
			current[n.Name] = nil
			if n.Agent && n.State == store.StateActive {
				current[n.Name] = n.Identities
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if all {
		w.holders, w.held = map[string]map[string]bool{}, map[string][]string{}
	}
	for node, ids := range current {
		for _, id := range w.held[node] {
			delete(w.holders[id], node)
			if len(w.holders[id]) == 0 {
				delete(w.holders, id)
			}
		}
		delete(w.held, node)
		if ids == nil {
			continue
		}
		w.held[node] = ids
		for _, id := range ids {
			if w.holders[id] == nil {
				w.holders[id] = map[string]bool{}
			}
			w.holders[id][node] = true
		}
	}
	return nil
}
