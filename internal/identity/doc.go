// Package identity owns the pure logic of an AgentIdentity: validating its
// spec, turning it into an issuance request, generating keys, issuing the
// SPIFFE X.509-SVID, computing when to renew (with a deterministic
// per-identity jitter) and how long to back off after a failure, rendering
// the Secret, and deciding, through an ordered chain of checks, whether the
// Secret in place must be reissued. Nothing here talks to the API server or
// reads the clock.
package identity
