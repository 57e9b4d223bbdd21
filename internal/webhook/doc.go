// Package webhook holds the admission webhooks: the Pod injector, which
// wires an AgentIdentity's files and environment into Pods that opt in with
// the label mtls.agentmesh.dev/identity (its patch logic is the pure
// function Inject), and the AgentTrustPolicy validator for what the CRD's
// CEL rules cannot check.
package webhook
