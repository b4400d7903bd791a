// Package layout has no code: its tests keep meshca's package layout as
// the design draws it. The top-level packages (ca, sds, rotation, xds,
// mesh, nodeapi) are meshca's public API, so nothing they export may
// mention a type from an internal package: a consumer declares the small
// interface it needs, and wire types live in a public package. The
// authority and the registry do not import each other (the registry takes
// only the lifetime rules of internal/authority, and the audit action of a
// rotation's re-keys). Selector rules live in internal/selector, a leaf of
// the standard library, so that the registry imports none of the agent's
// workload packages.
package layout
