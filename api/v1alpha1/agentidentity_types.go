package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// KeyDelivery says how an identity's private key reaches its pods.
// +kubebuilder:validation:Enum=Secret;PodCertificate
type KeyDelivery string

const (
	// KeyDeliverySecret means the operator generates the key and writes it, with the
	// certificate, into the identity Secret. Every replica shares the key.
	KeyDeliverySecret KeyDelivery = "Secret"
	// KeyDeliveryPodCertificate means the kubelet generates one key per pod on the
	// node and agentmesh signs the pod's PodCertificateRequest; no Secret holds
	// the key.
	KeyDeliveryPodCertificate KeyDelivery = "PodCertificate"
)

// PrivateKeyAlgorithm is the public-key algorithm of an identity's key.
// +kubebuilder:validation:Enum=ECDSA;Ed25519;RSA
type PrivateKeyAlgorithm string

const (
	// ECDSAKeyAlgorithm is ECDSA on NIST P-256 (size 256) or P-384 (size 384).
	ECDSAKeyAlgorithm PrivateKeyAlgorithm = "ECDSA"
	// Ed25519KeyAlgorithm is Ed25519; it has no size.
	Ed25519KeyAlgorithm PrivateKeyAlgorithm = "Ed25519"
	// RSAKeyAlgorithm is RSA with a modulus of 2048, 3072 or 4096 bits.
	RSAKeyAlgorithm PrivateKeyAlgorithm = "RSA"
)

// PrivateKey describes the key generated for every issuance.
// +kubebuilder:validation:XValidation:rule="self.algorithm != 'RSA' || !has(self.size) || self.size in [2048, 3072, 4096]",message="size must be 2048, 3072 or 4096 for RSA",fieldPath=".size"
// +kubebuilder:validation:XValidation:rule="self.algorithm != 'ECDSA' || !has(self.size) || self.size in [256, 384]",message="size must be 256 or 384 for ECDSA",fieldPath=".size"
// +kubebuilder:validation:XValidation:rule="self.algorithm != 'Ed25519' || !has(self.size)",message="size must not be set for Ed25519",fieldPath=".size"
type PrivateKey struct {
	// algorithm is the key algorithm: ECDSA (the default), Ed25519 or RSA.
	// A fresh key is generated for every issuance and never reused. RSA keys
	// take tens to hundreds of milliseconds to generate; prefer ECDSA or
	// Ed25519 unless a peer requires RSA.
	// +optional
	// +kubebuilder:default=ECDSA
	Algorithm PrivateKeyAlgorithm `json:"algorithm,omitempty"`

	// size is the key size in bits: 256 (the default) or 384 for ECDSA;
	// 2048 (the default), 3072 or 4096 for RSA; unset for Ed25519.
	// +optional
	// +kubebuilder:validation:Minimum=256
	// +kubebuilder:validation:Maximum=4096
	Size int32 `json:"size,omitempty"`
}

// AgentIdentitySpec is the desired identity of one agent.
// +kubebuilder:validation:XValidation:rule="!(has(self.keyDelivery) && self.keyDelivery == 'PodCertificate' && has(self.privateKey) && self.privateKey.algorithm == 'RSA' && has(self.privateKey.size) && self.privateKey.size == 2048)",message="keyDelivery PodCertificate supports RSA keys of 3072 and 4096 bits only (the kubelet generates the key)",fieldPath=".privateKey.size"
// +kubebuilder:validation:XValidation:rule="!(has(self.renewBefore) && has(self.renewBeforePercentage))",message="set at most one of renewBefore and renewBeforePercentage",fieldPath=".renewBefore"
// +kubebuilder:validation:XValidation:rule="!has(self.renewBefore) || duration(self.renewBefore) < duration(has(self.duration) ? self.duration : '24h')",message="renewBefore must be shorter than duration",fieldPath=".renewBefore"
type AgentIdentitySpec struct {
	// secretName is the name of the Secret (type kubernetes.io/tls) that holds
	// the certificate chain (tls.crt), the private key (tls.key) and the trust
	// bundle (ca.crt). Defaults to "<metadata.name>-tls". A Secret of that name
	// that agentmesh did not create is never overwritten.
	// +optional
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	SecretName string `json:"secretName,omitempty"`

	// serviceAccountName is the service account that pods using this identity
	// must run as; the pod injector rejects a pod that runs as another one.
	// Defaults to "default".
	// +optional
	// +kubebuilder:default=default
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	ServiceAccountName string `json:"serviceAccountName,omitempty"`

	// dnsNames are extra DNS subject alternative names for the certificate,
	// for peers that verify a host name rather than a SPIFFE ID. The SPIFFE ID
	// is always the only URI SAN. A leading "*." wildcard label is allowed.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:MinLength=1
	// +kubebuilder:validation:items:MaxLength=253
	// +kubebuilder:validation:items:Pattern=`^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
	DNSNames []string `json:"dnsNames,omitempty"`

	// keyDelivery says where the private key comes from: "Secret" (the
	// default: the operator generates it and stores it in secretName, and
	// every replica shares it) or "PodCertificate" (the kubelet generates one
	// key per pod on the node and agentmesh signs its PodCertificateRequest;
	// no Secret holds the key; certificates live at least 1h, the API
	// server's minimum, and RSA keys are 3072 or 4096 bits).
	// +optional
	// +kubebuilder:default=Secret
	KeyDelivery KeyDelivery `json:"keyDelivery,omitempty"`

	// duration is the lifetime of each issued certificate, as a Go duration
	// ("24h", "90m"). Defaults to 24h; at least 1m, at most 720h (30 days).
	// +optional
	// +kubebuilder:default="24h"
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('1m') && duration(self) <= duration('720h')",message="duration must be between 1m and 720h"
	Duration *metav1.Duration `json:"duration,omitempty"`

	// renewBefore is how long before expiry the certificate is renewed, as a
	// Go duration; it must be shorter than duration. Mutually exclusive with
	// renewBeforePercentage. When neither is set the certificate is renewed at
	// 50% of its lifetime. A small per-identity jitter is added so that
	// identities created together do not renew together.
	// +optional
	// +kubebuilder:validation:Type=string
	// +kubebuilder:validation:Pattern=`^([0-9]+(\.[0-9]+)?(ns|us|ms|s|m|h))+$`
	// +kubebuilder:validation:MaxLength=32
	// +kubebuilder:validation:XValidation:rule="duration(self) >= duration('10s')",message="renewBefore must be at least 10s"
	RenewBefore *metav1.Duration `json:"renewBefore,omitempty"`

	// renewBeforePercentage is the share of the lifetime, from 1 to 99, that
	// remains when the certificate is renewed: 50 (the behaviour when neither
	// this nor renewBefore is set) renews half-way, 25 when three quarters
	// have passed. Mutually exclusive with renewBefore.
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=99
	RenewBeforePercentage *int32 `json:"renewBeforePercentage,omitempty"`

	// privateKey configures the key generated for every issuance. Defaults to
	// ECDSA P-256.
	// +optional
	PrivateKey *PrivateKey `json:"privateKey,omitempty"`
}

// AgentIdentityStatus is the observed state of an AgentIdentity.
type AgentIdentityStatus struct {
	// conditions: "Ready" is True while a valid certificate and the trust
	// ConfigMap are in place; "Issuing" is True while a new certificate is
	// being issued, with the reason saying why; "PolicyResolved" is True when
	// the trust ConfigMap holds the current effective policy. Every condition
	// carries observedGeneration.
	// +optional
	// +listType=map
	// +listMapKey=type
	// +kubebuilder:validation:MaxItems=8
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// spiffeID is the identity's SPIFFE ID,
	// spiffe://<trust domain>/ns/<namespace>/agent/<name>.
	// +optional
	SPIFFEID string `json:"spiffeID,omitempty"`

	// secretName is the Secret that holds the current certificate and key.
	// +optional
	SecretName string `json:"secretName,omitempty"`

	// serialNumber is the serial number of the current certificate, in hex.
	// +optional
	SerialNumber string `json:"serialNumber,omitempty"`

	// notBefore is the start of the current certificate's validity.
	// +optional
	NotBefore *metav1.Time `json:"notBefore,omitempty"`

	// notAfter is the expiry of the current certificate.
	// +optional
	NotAfter *metav1.Time `json:"notAfter,omitempty"`

	// renewalTime is when the current certificate will be renewed.
	// +optional
	RenewalTime *metav1.Time `json:"renewalTime,omitempty"`

	// caSerial is the serial number, in hex, of the CA that signed the current
	// certificate.
	// +optional
	CASerial string `json:"caSerial,omitempty"`

	// observedGeneration is the generation of the spec that the current
	// certificate was issued for.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// failedIssuanceAttempts counts consecutive failed issuances; it drives
	// the exponential back-off and is reset by a successful issuance.
	// +optional
	FailedIssuanceAttempts int32 `json:"failedIssuanceAttempts,omitempty"`

	// lastFailureTime is when issuance last failed.
	// +optional
	LastFailureTime *metav1.Time `json:"lastFailureTime,omitempty"`

	// trustConfigMap is the ConfigMap that holds the identity's trust bundle
	// (bundle.pem) and effective policy (policy.json): "<name>-trust".
	// +optional
	TrustConfigMap string `json:"trustConfigMap,omitempty"`

	// trustContentHash is the hash of the content agentmesh last put in the
	// trust ConfigMap. While a policy error keeps that ConfigMap as it was,
	// the operator checks it against this hash (which, unlike the
	// ConfigMap, only agentmesh may write): content someone else changed is
	// not kept.
	// +optional
	TrustContentHash string `json:"trustContentHash,omitempty"`

	// podCertificates is how many unexpired certificates agentmesh issued to
	// the identity's Pods through PodCertificateRequests (PodCertificate
	// delivery only).
	// +optional
	PodCertificates int32 `json:"podCertificates,omitempty"`

	// nextRefreshTime is the earliest time a Pod of the identity is told to
	// refresh its certificate (PodCertificate delivery only).
	// +optional
	NextRefreshTime *metav1.Time `json:"nextRefreshTime,omitempty"`

	// pods is how many running Pods use the identity: Pods labelled
	// mtls.agentmesh.dev/identity=<name> in phase Running.
	// +optional
	Pods int32 `json:"pods,omitempty"`

	// policies lists the AgentTrustPolicies of the namespace that select
	// this identity, by name.
	// +optional
	// +listType=set
	// +kubebuilder:validation:MaxItems=256
	Policies []string `json:"policies,omitempty"`
}

// AgentIdentity gives one AI agent a SPIFFE identity: agentmesh issues it a
// short-lived X.509 certificate from the cluster's agent CA and renews it
// well before expiry.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) <= 63 && self.metadata.name.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')",message="metadata.name must be a DNS label of at most 63 characters (it is the last segment of the SPIFFE ID)"
// +kubebuilder:resource:shortName=aid,categories=agentmesh
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="SPIFFE ID",type=string,JSONPath=`.status.spiffeID`
// +kubebuilder:printcolumn:name="Expires",type=string,JSONPath=`.status.notAfter`
// +kubebuilder:printcolumn:name="Secret",type=string,JSONPath=`.status.secretName`,priority=1
// +kubebuilder:printcolumn:name="Renewal",type=string,JSONPath=`.status.renewalTime`,priority=1
// +kubebuilder:printcolumn:name="Pods",type=integer,JSONPath=`.status.pods`,priority=1
// +kubebuilder:printcolumn:name="Policies",type=string,JSONPath=`.status.policies`,priority=1
// +kubebuilder:printcolumn:name="Reason",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].reason`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AgentIdentity struct {
	metav1.TypeMeta `json:",inline"`

	// metadata is the standard object metadata. The name becomes the last
	// segment of the SPIFFE ID and must be a DNS label (at most 63 characters).
	// +optional
	metav1.ObjectMeta `json:"metadata,omitempty"`

	// spec is the desired identity.
	// +required
	Spec AgentIdentitySpec `json:"spec"`

	// status is the observed state, written by the operator.
	// +optional
	Status AgentIdentityStatus `json:"status,omitempty"`
}

// +kubebuilder:object:root=true

// AgentIdentityList is a list of AgentIdentity.
type AgentIdentityList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AgentIdentity `json:"items"`
}

// EffectiveSecretName is spec.secretName, or "<name>-tls" when it is empty.
func (a *AgentIdentity) EffectiveSecretName() string {
	if a.Spec.SecretName != "" {
		return a.Spec.SecretName
	}
	return a.Name + DefaultSecretNameSuffix
}

// TrustConfigMapName is the name of the identity's trust ConfigMap.
func (a *AgentIdentity) TrustConfigMapName() string {
	return a.Name + TrustConfigMapSuffix
}

// EffectiveServiceAccountName is spec.serviceAccountName, or "default".
func (a *AgentIdentity) EffectiveServiceAccountName() string {
	if a.Spec.ServiceAccountName != "" {
		return a.Spec.ServiceAccountName
	}
	return DefaultServiceAccountName
}
