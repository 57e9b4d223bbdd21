// Package controller glues the pure packages (ca, identity, policy) to the
// API server: one reconciler per kind, each written as small phases over a
// scope, with the status written once per pass and skipped when unchanged.
package controller
