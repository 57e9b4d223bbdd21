// Package agenttls is the Go SDK for agents that run with an agentmesh
// identity. It reads the files that the agentmesh operator mounts into every
// opted-in Pod, follows their updates without a restart, and builds TLS
// configurations that do SPIFFE mutual TLS and enforce the agent's trust
// policy on every handshake.
//
// # Files
//
// The operator's webhook mounts a read-only volume at DefaultDir
// (/var/run/agentmesh) and sets the AGENTMESH_* variables:
//
//	tls.crt      AGENTMESH_CERT_FILE    the leaf X.509-SVID and its chain (PEM)
//	tls.key      AGENTMESH_KEY_FILE     the leaf's private key (PKCS#8 PEM)
//	bundle.pem   AGENTMESH_BUNDLE_FILE  the CAs of every trusted trust domain (PEM)
//	policy.json  AGENTMESH_POLICY_FILE  the effective policy (agentmesh.dev/policy/v1 or v2)
//	             AGENTMESH_SPIFFE_ID    the agent's SPIFFE ID
//
// NewSource loads them (from the variables by default, or WithDir) and
// validates everything: the certificate and key parse and match, the leaf
// has exactly one SPIFFE ID, policy.json has the known version and is about
// that ID, and the leaf verifies against its own trust domain's CAs.
// bundle.pem's CAs are assigned to trust domains by the fingerprints in
// policy.json's trustDomains; a CA not listed there is trusted for nothing.
//
// # Updates
//
// The kubelet updates the volume atomically (a new timestamped directory,
// then a rename of the ..data symlink). A Source watches the directory with
// fsnotify and polls as a fallback (WithPollInterval); on a change it reads
// all four files from one version of the volume and swaps in the new
// Snapshot. A corrupt or inconsistent update (a key that does not match the
// certificate, an unreadable policy) is refused: the last good Snapshot
// stays in use, Err reports why, WithErrorHandler is called and the error is
// logged (log/slog, WithLogger). Nothing about private keys is ever logged.
//
// # TLS
//
// ServerTLSConfig and ClientTLSConfig present the current certificate on
// every handshake (GetCertificate, GetClientCertificate), so a rotation needs
// no restart and does not cut established connections. The peer is verified
// against the CAs of the peer's own trust domain only, so a federated CA can
// never vouch for an identity of another trust domain, and then checked
// against policy.json: ingress for servers, egress for clients. A peer is
// allowed when the direction has allowAll, lists its exact SPIFFE ID, or
// lists a prefix of it. A direction in Audit mode logs a peer it does not
// allow and lets it through. A refused handshake fails with a *PolicyError
// that names both SPIFFE IDs, the direction and the policies, e.g.
//
//	agentmesh: ingress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow spiffe://cluster.local/ns/agents/agent/outsider (policies: worker-ingress)
//
// Only TLS 1.3 is accepted unless AllowTLS12 is given. Clients do not verify
// host names; WithServerID pins the server's exact SPIFFE ID.
//
// NewServer, NewTransport and NewHTTPClient wire these into net/http, and
// PeerID returns the SPIFFE ID of a request's client.
//
// # Agent protocols: MCP tools and A2A skills
//
// policy.json v2 adds grants to a direction: rules of an AgentTrustPolicy
// that restrict what their peers may do (MCP tools, A2A skills) or that
// expire (expiresAt). A grant lets its peers connect until it expires; the
// handshake checks the expiry with the Source's clock (WithClock), so a
// policy.json that is not updated in time cannot extend a grant.
// MCPHandler and A2AHandler enforce the rest, per request, on the verified
// mTLS peer:
//
//	mux.Handle("/mcp", src.MCPHandler(mcp.NewStreamableHTTPHandler(getServer, nil)))
//	srv := src.NewServer(":8443", mux)
//
// MCPHandler refuses a tools/call of a tool the peer may not call with a
// JSON-RPC error (CodeForbidden) that names both SPIFFE IDs and the rules,
// and filters tools/list; A2AHandler filters the Agent Card's skills and
// refuses messages for other skills. Each refusal, and in Audit mode each
// would-be refusal, is one DecisionRecord, sent to WithDecisionHook or logged
// with log/slog (SlogDecisionHook). A peer that a whole-peer rule allows
// (every v1 rule) may do everything.
//
// # go-spiffe
//
// Source and Snapshot implement go-spiffe's x509svid.Source and
// x509bundle.Source, so code written against
// github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig works unchanged:
//
//	tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeAny())
//
// Such configurations verify peers against the right trust domain's CAs but
// do not enforce policy.json; Source.Authorizer does, and GuardResumption
// makes resumed sessions pass the same checks (go-spiffe verifies in
// VerifyPeerCertificate, which Go skips on resumption):
//
//	cfg := src.GuardResumption(tlsconfig.MTLSServerConfig(src, src, src.Authorizer(agenttls.Ingress)), agenttls.Ingress)
//
// The sub-package agenttlstest creates CAs, SPIFFE certificates and the
// files the operator renders, and lays them out as the kubelet does.
package agenttls
