package app

import "github.com/meshca/meshca/internal/registry"

// RegistryOf is a's registry, for benchmarks that compare a call through
// the network with the same call made in-process.
func RegistryOf(a *App) *registry.Registry { return a.reg }
