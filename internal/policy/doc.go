// Package policy owns the pure logic of AgentTrustPolicy: compiling a
// policy (dropping what is invalid, so that an error never widens what is
// allowed), resolving every policy that governs an identity into its
// effective policy (the policy.json contract), and assembling the trust
// bundle of an identity from its own trust domain's CAs and the federated
// bundles its policies name. Nothing here talks to the API server.
package policy
