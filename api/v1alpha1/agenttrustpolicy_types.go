package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PolicyMode says whether a policy denies or only reports.
// +kubebuilder:validation:Enum=Enforce;Audit
type PolicyMode string

const (
	// PolicyModeEnforce refuses handshakes that the policy does not allow.
	PolicyModeEnforce PolicyMode = "Enforce"
	// PolicyModeAudit lets every authenticated handshake through and reports
	// the ones that the policy would refuse.
	PolicyModeAudit PolicyMode = "Audit"
)

// PolicyType is a direction of traffic that a policy governs.
// +kubebuilder:validation:Enum=Ingress;Egress
type PolicyType string

const (
	// PolicyTypeIngress governs who may connect to the selected identities.
	PolicyTypeIngress PolicyType = "Ingress"
	// PolicyTypeEgress governs whom the selected identities may connect to.
	PolicyTypeEgress PolicyType = "Egress"
)

// AgentPeer names the identities on the other end of a connection. Set
// either identitySelector and/or namespaceSelector, or spiffeIDs, or
// trustDomains.
// +kubebuilder:validation:XValidation:rule="(has(self.identitySelector) || has(self.namespaceSelector) ? 1 : 0) + (has(self.spiffeIDs) ? 1 : 0) + (has(self.trustDomains) ? 1 : 0) == 1",message="set exactly one of: identitySelector and/or namespaceSelector, spiffeIDs, trustDomains"
type AgentPeer struct {
	// identitySelector selects AgentIdentities by label. Alone, it selects
	// identities in the policy's namespace; with namespaceSelector, in the
	// namespaces that selector matches. An empty selector ({}) selects every
	// identity.
	// +optional
	IdentitySelector *LabelSelector `json:"identitySelector,omitempty"`

	// namespaceSelector selects namespaces by label. Alone, it selects every
	// identity in those namespaces, which compiles to a namespace prefix
	// rather than a list of identities. An empty selector ({}) selects every
	// namespace.
	// +optional
	NamespaceSelector *LabelSelector `json:"namespaceSelector,omitempty"`

	// spiffeIDs are exact SPIFFE IDs, typically of agents in another trust
	// domain. They are matched exactly: no wildcards, no prefixes.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MaxLength=2048
	// +kubebuilder:validation:items:Pattern=`^spiffe://`
	SPIFFEIDs []string `json:"spiffeIDs,omitempty"`

	// trustDomains selects every identity of the named trust domains
	// ("partner.example"), typically one federated through trustBundles.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=255
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9._-]+$`
	TrustDomains []string `json:"trustDomains,omitempty"`
}

// IngressRule allows connections from the peers it lists.
type IngressRule struct {
	// from lists the peers allowed to connect. An empty or absent list
	// allows every peer whose certificate verifies against the trust bundle.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	From []AgentPeer `json:"from,omitempty"`

	// protocols restricts what the peers of this rule may do once connected,
	// per agent protocol. Absent (the default), the rule allows the whole
	// peer, as it always did. Present, the rule allows exactly what it lists:
	// the MCP tools of mcp and the A2A skills of a2a, and nothing of a
	// protocol it does not name. The agent enforces it, on the verified mTLS
	// peer, with the middleware of the Go SDK (pkg/agenttls); at the TLS
	// level a restricted rule still lets its peers connect.
	// +optional
	Protocols *ProtocolRules `json:"protocols,omitempty"`

	// expiresAt ends the rule: from this instant on (RFC 3339, for example
	// "2026-12-31T18:00:00Z") it allows nothing. The operator recompiles the
	// policy at that moment, and the SDK refuses the rule's peers past it
	// even while an older policy.json is still mounted. Absent (the
	// default), the rule does not expire.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
}

// ProtocolRules lists what the peers of a rule may do, per agent protocol.
// +kubebuilder:validation:XValidation:rule="has(self.mcp) || has(self.a2a)",message="protocols must restrict mcp, a2a or both"
type ProtocolRules struct {
	// mcp lists the Model Context Protocol tools the peers may call. Absent,
	// they may call no tool.
	// +optional
	MCP *MCPRule `json:"mcp,omitempty"`

	// a2a lists the Agent2Agent skills the peers may use. Absent, they may
	// use no skill.
	// +optional
	A2A *A2ARule `json:"a2a,omitempty"`
}

// MCPRule lists MCP tools.
type MCPRule struct {
	// tools are tool names ("search") or patterns that end in "*" and match
	// every name that starts with what precedes it ("read_*"; "*" alone
	// matches every tool). Names are matched exactly, case-sensitively.
	// tools/list shows a peer only the tools it may call.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^(\*|[A-Za-z0-9_./-]+\*?)$`
	Tools []string `json:"tools"`
}

// A2ARule lists A2A skills.
type A2ARule struct {
	// skills are the IDs of the skills of the agent's Agent Card ("summarize"),
	// or patterns that end in "*" as for MCP tools. The Agent Card served to
	// a peer lists only the skills it may use.
	// +required
	// +listType=set
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=128
	// +kubebuilder:validation:items:Pattern=`^(\*|[A-Za-z0-9_.:/-]+\*?)$`
	Skills []string `json:"skills"`
}

// EgressRule allows connections to the peers it lists.
type EgressRule struct {
	// to lists the peers the selected identities may connect to. An empty or
	// absent list allows every peer whose certificate verifies against the
	// trust bundle.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	To []AgentPeer `json:"to,omitempty"`
}

// ConfigMapKeyRef names one key of a ConfigMap in the policy's namespace.
type ConfigMapKeyRef struct {
	// name is the ConfigMap's name, in the same namespace as the policy.
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`

	// key is the ConfigMap data key that holds PEM CA certificates.
	// Defaults to "ca.crt".
	// +optional
	// +kubebuilder:default="ca.crt"
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[-._a-zA-Z0-9]+$`
	Key string `json:"key,omitempty"`
}

// TrustBundle adds the CA certificates of another trust domain.
type TrustBundle struct {
	// trustDomain is the trust domain whose CAs the ConfigMap holds, for
	// example "partner.example".
	// +required
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=255
	// +kubebuilder:validation:Pattern=`^[a-z0-9._-]+$`
	TrustDomain string `json:"trustDomain"`

	// configMap names the ConfigMap key, in the policy's namespace, that
	// holds the trust domain's CA certificates in PEM.
	// +required
	ConfigMap ConfigMapKeyRef `json:"configMap"`
}

// AgentTrustPolicySpec says which peers the selected identities may talk to.
type AgentTrustPolicySpec struct {
	// agentSelector selects the AgentIdentities in this namespace that the
	// policy governs. An empty or absent selector selects all of them.
	// +optional
	AgentSelector LabelSelector `json:"agentSelector,omitempty"`

	// policyTypes lists the directions the policy governs. Defaults to
	// ["Ingress"], plus "Egress" when egress is set. Once a policy governs a
	// direction for an identity, only the union of the allows of all such
	// policies passes (default deny); a direction that no policy governs
	// follows the cluster's default posture.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=2
	PolicyTypes []PolicyType `json:"policyTypes,omitempty"`

	// ingress lists the rules for incoming connections. A governed identity
	// with no ingress rules accepts no one.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Ingress []IngressRule `json:"ingress,omitempty"`

	// egress lists the rules for outgoing connections. A governed identity
	// with no egress rules may connect to no one.
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=32
	Egress []EgressRule `json:"egress,omitempty"`

	// trustBundles adds CA certificates of other trust domains to the trust
	// bundle of the selected identities, for federation.
	// +optional
	// +listType=map
	// +listMapKey=trustDomain
	// +kubebuilder:validation:MaxItems=16
	TrustBundles []TrustBundle `json:"trustBundles,omitempty"`

	// mode is "Enforce" (the default: handshakes the policy does not allow
	// are refused) or "Audit" (they are allowed and reported).
	// +optional
	// +kubebuilder:default=Enforce
	Mode PolicyMode `json:"mode,omitempty"`
}

// AgentTrustPolicyStatus is the observed state of an AgentTrustPolicy.
type AgentTrustPolicyStatus struct {
	// conditions: "Ready" is True when the policy, and every trust bundle it
	// names, has been compiled into the selected identities' trust ConfigMaps.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// selectedIdentities is how many AgentIdentities the policy governs.
	// +optional
	SelectedIdentities int32 `json:"selectedIdentities"`

	// observedGeneration is the generation of the spec that was compiled.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
}

// AgentTrustPolicy says which agent identities may talk to which, like a
// NetworkPolicy whose peers are identities instead of IP addresses.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=atp,categories=agentmesh
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Selected",type=integer,JSONPath=`.status.selectedIdentities`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AgentTrustPolicy struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata.
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired policy.
	// +required
	Spec AgentTrustPolicySpec `json:"spec"`

	// status is the observed state, written by the operator.
	// +optional
	Status AgentTrustPolicyStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// AgentTrustPolicyList is a list of AgentTrustPolicy.
type AgentTrustPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AgentTrustPolicy `json:"items"`
}
