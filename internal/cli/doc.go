// Package cli holds the pure logic of kubectl-agentmesh, one package per
// concern: output (tables, JSON, YAML), status (the installation at a
// glance), inspect (one identity), explain (why one agent may or may not
// call another, on the SDK's own evaluation), progress (what renew and
// rotate-ca wait for) and check (preflight). Package command glues them to
// the API server with cobra and cli-runtime; cmd/kubectl-agentmesh only
// runs it.
package cli
