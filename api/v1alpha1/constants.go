package v1alpha1

// Field managers of the operator's writes. Each reconciler that shares an
// object with another applies its part of the status under its own name.
const (
	// FieldManager writes the objects agentmesh owns alone (Secrets, trust
	// ConfigMaps, the CA and webhook Secrets, policy status).
	FieldManager = "agentmesh"
	// FieldManagerCertificate applies an AgentIdentity's certificate status
	// and its Ready and Issuing conditions.
	FieldManagerCertificate = "agentmesh-certificate"
	// FieldManagerTrust applies an AgentIdentity's trust status
	// (trustConfigMap, policies) and its PolicyResolved condition.
	FieldManagerTrust = "agentmesh-trust"
)

// Condition types. Every condition carries observedGeneration.
const (
	// ConditionReady is True on an AgentIdentity while a valid certificate
	// for its current spec (or PodCertificate delivery) and its trust
	// ConfigMap are in place, and on an AgentTrustPolicy once it is compiled
	// into the trust ConfigMaps of the identities it selects.
	ConditionReady = "Ready"
	// ConditionIssuing is True on an AgentIdentity while a new certificate is
	// being issued; the reason says why (first issuance, renewal, repair).
	ConditionIssuing = "Issuing"
	// ConditionPolicyResolved is True on an AgentIdentity when its trust
	// ConfigMap holds the effective policy of every AgentTrustPolicy that
	// selects it and the trust bundles they name.
	ConditionPolicyResolved = "PolicyResolved"
)

// Condition reasons. They are stable: scripts and alerts may match on them.
const (
	// ReasonIssued: a certificate for the current spec is in place.
	ReasonIssued = "Issued"
	// ReasonPending: nothing has been issued yet.
	ReasonPending = "Pending"
	// ReasonRenewing: the certificate is being renewed before it expires.
	ReasonRenewing = "Renewing"
	// ReasonSecretRepaired: the Secret was missing, edited or inconsistent
	// and has been (or is being) rewritten.
	ReasonSecretRepaired = "SecretRepaired"
	// ReasonSpecChanged: the spec changed and a certificate for it is issued.
	ReasonSpecChanged = "SpecChanged"
	// ReasonInvalidSpec: the spec cannot be acted on; the message says why.
	// Fix the object; no retry happens until it changes.
	ReasonInvalidSpec = "InvalidSpec"
	// ReasonCANotReady: the agent CA could not be loaded or is not valid.
	ReasonCANotReady = "CANotReady"
	// ReasonIssuanceFailed: issuing or writing the certificate failed; it is
	// retried with exponential back-off.
	ReasonIssuanceFailed = "IssuanceFailed"
	// ReasonSecretConflict: a Secret of the requested name exists and was not
	// created by agentmesh for this identity; it is left untouched.
	ReasonSecretConflict = "SecretConflict"
	// ReasonCAChanged: the certificate was signed by a CA that is no longer
	// trusted, and a certificate from the current CA is issued.
	ReasonCAChanged = "CAChanged"
	// ReasonCARotated: the certificate was signed by a CA that a rotation
	// retires; it is reissued under the new CA, at a bounded rate.
	ReasonCARotated = "CARotated"
	// ReasonRenewRequested: a renewal ahead of the renewal time was asked
	// for with the mtls.agentmesh.dev/renew annotation.
	ReasonRenewRequested = "RenewRequested"
	// ReasonKeyGenerating: a slow (RSA) key is being generated off the
	// reconcile path; issuance follows as soon as it is ready.
	ReasonKeyGenerating = "KeyGenerating"
	// ReasonCompiled: the policy is compiled into every selected identity's
	// trust ConfigMap (on a policy), or the identity's trust ConfigMap is
	// current (on an identity).
	ReasonCompiled = "Compiled"
	// ReasonCompiling: the policy is not yet compiled into every selected
	// identity's trust ConfigMap; the message says how many remain.
	ReasonCompiling = "Compiling"
	// ReasonPolicyInvalid: a policy has fields that cannot be compiled. They
	// are left out, which only ever narrows what is allowed; a policy whose
	// agentSelector is invalid cannot tell whom it governs, and the identities
	// it governed before keep their last trust ConfigMap.
	ReasonPolicyInvalid = "PolicyInvalid"
	// ReasonBundleInvalid: a trust bundle ConfigMap is missing, not labelled
	// for agentmesh, or does not hold CA certificates; the last good bundle of
	// that trust domain is kept.
	ReasonBundleInvalid = "BundleInvalid"
	// ReasonPodCertificate: the identity is delivered per Pod through
	// PodCertificateRequests, and its trust ConfigMap is in place.
	ReasonPodCertificate = "PodCertificate"
	// ReasonIdentityNotFound (an Event on a Pod): the Pod asks for an
	// AgentIdentity that does not exist; it waits for the identity's Secret.
	ReasonIdentityNotFound = "IdentityNotFound"
	// ReasonNotInjected (an Event on a Pod): the Pod carries the opt-in
	// label but was not injected, because it was created while the webhook
	// was not installed or not reachable with failurePolicy Ignore.
	ReasonNotInjected = "NotInjected"
	// ReasonTrustPending (Ready, on an identity): the certificate is in
	// place and the trust ConfigMap is not published yet.
	ReasonTrustPending = "TrustPending"
	// ReasonPolicyTooLarge: the trust bundle and effective policy would not
	// fit the size cap; the last trust ConfigMap is kept.
	ReasonPolicyTooLarge = "PolicyTooLarge"
)

// Labels and annotations.
const (
	// LabelIdentity is the pod opt-in label: a pod labelled
	// mtls.agentmesh.dev/identity=<AgentIdentity name> gets that identity
	// injected. The operator also puts it on the Secrets and ConfigMaps it
	// writes for an identity, naming their parent.
	LabelIdentity = "mtls.agentmesh.dev/identity"
	// LabelManagedBy marks every object the operator writes; the operator's
	// Secret and ConfigMap caches only hold objects with this label.
	LabelManagedBy = "app.kubernetes.io/managed-by"
	// ManagedByValue is the value of LabelManagedBy on agentmesh's objects.
	ManagedByValue = "agentmesh"
	// AnnotationContentHash holds a hash of what the operator wrote into a
	// ConfigMap, so that unchanged content is never written again.
	AnnotationContentHash = "mtls.agentmesh.dev/content-hash"
	// AnnotationDataHash on an identity Secret holds a hash of the data the
	// operator wrote into it (tls.crt, tls.key, ca.crt). The operator's
	// cache keeps only the metadata, tls.crt and ca.crt of its Secrets and
	// the hash of the data it saw (AnnotationCachedHash): when the two
	// hashes agree, the Secret holds exactly what the operator wrote, and
	// its key needs no fresh check.
	AnnotationDataHash = "mtls.agentmesh.dev/data-hash"
	// AnnotationCachedHash is set by the operator's cache, on its own copy
	// of an identity Secret or trust ConfigMap only, never on the API
	// server: the hash of the data the object held when the cache saw it
	// (for a Secret, as AnnotationDataHash; for a trust ConfigMap, as
	// AnnotationContentHash, or CachedHashOther when it holds anything but
	// exactly bundle.pem and policy.json). The cache drops the data that
	// the hash stands for.
	AnnotationCachedHash = "mtls.agentmesh.dev/cached-hash"
	// CachedHashOther is AnnotationCachedHash of a trust ConfigMap that
	// does not hold exactly bundle.pem and policy.json.
	CachedHashOther = "other"
	// AnnotationSpecHash on an identity Secret holds a hash of the spec
	// fields the certificate was issued for (SPIFFE ID, DNS names, key
	// algorithm and size, duration); a different hash means a spec change.
	AnnotationSpecHash = "mtls.agentmesh.dev/spec-hash"
	// AnnotationSPIFFEID on an identity Secret names the SPIFFE ID of the
	// certificate it holds.
	AnnotationSPIFFEID = "mtls.agentmesh.dev/spiffe-id"
	// AnnotationAnchorsHash on a trust ConfigMap is a hash of the own trust
	// domain's CAs it holds, so a CA rotation can tell which bundles are
	// current without parsing them.
	AnnotationAnchorsHash = "mtls.agentmesh.dev/anchors-hash"
	// AnnotationPolicies on a trust ConfigMap lists the AgentTrustPolicies
	// compiled into it, as name=generation pairs separated by commas.
	AnnotationPolicies = "mtls.agentmesh.dev/policies"
	// AnnotationRenew on an AgentIdentity asks for a new key and
	// certificate now, ahead of the renewal time (kubectl agentmesh renew
	// identity sets it; any non-empty value, by convention the time of the
	// request). The operator reissues, then removes the annotation. It has
	// no effect in PodCertificate delivery, where the kubelet refreshes each
	// Pod's certificate, and the operator removes it there at once.
	AnnotationRenew = "mtls.agentmesh.dev/renew"
	// AnnotationRenewed on an identity Secret holds the value of the
	// AnnotationRenew request its certificate was issued for, so that a
	// request is served once even when the operator sees it again before
	// its removal.
	AnnotationRenewed = "mtls.agentmesh.dev/renewed-for"
	// AnnotationInjected on a Pod names the SPIFFE ID the injector wired
	// into it.
	AnnotationInjected = "mtls.agentmesh.dev/injected"
	// LabelTrustDomain on a ClusterTrustBundle names the trust domain whose
	// CAs it holds; pods select it in a clusterTrustBundle projection.
	LabelTrustDomain = "mtls.agentmesh.dev/trust-domain"
	// LabelTrustBundle marks a ConfigMap that holds the CA certificates of a
	// federated trust domain, named in an AgentTrustPolicy's trustBundles:
	// agentmesh watches only ConfigMaps with mtls.agentmesh.dev/trust-bundle=true.
	LabelTrustBundle = "mtls.agentmesh.dev/trust-bundle"
)

// Fixed names of the API.
const (
	// MountPath is where the injector mounts an identity's files in every
	// container of an opted-in Pod.
	MountPath = "/var/run/agentmesh"
	// VolumeName is the name of the injected projected volume.
	VolumeName = "agentmesh-identity"
	// Environment variables the injector sets in every container.
	EnvSPIFFEID   = "AGENTMESH_SPIFFE_ID"
	EnvCertFile   = "AGENTMESH_CERT_FILE"
	EnvKeyFile    = "AGENTMESH_KEY_FILE"
	EnvBundleFile = "AGENTMESH_BUNDLE_FILE"
	EnvPolicyFile = "AGENTMESH_POLICY_FILE"
	// Keys of the Secrets agentmesh writes and reads: kubernetes.io/tls,
	// with the trust anchors in ca.crt as cert-manager writes them.
	SecretCertKey  = "tls.crt"
	SecretKeyKey   = "tls.key"
	SecretTrustKey = "ca.crt"
	// Keys of a trust ConfigMap.
	TrustBundleKey = "bundle.pem"
	TrustPolicyKey = "policy.json"
	// Files of the injected volume.
	FileCert   = "tls.crt"
	FileKey    = "tls.key"
	FileBundle = "bundle.pem"
	FilePolicy = "policy.json"
	// DefaultTrustDomain is the trust domain used when none is configured.
	DefaultTrustDomain = "cluster.local"
	// DefaultSecretNameSuffix is appended to an AgentIdentity's name to form
	// its Secret's name when spec.secretName is empty.
	DefaultSecretNameSuffix = "-tls"
	// TrustConfigMapSuffix is appended to an AgentIdentity's name to form the
	// name of its trust ConfigMap (bundle.pem and policy.json).
	TrustConfigMapSuffix = "-trust"
	// PodCertificateSignerName is the signer agentmesh serves for
	// PodCertificateRequests of identities in PodCertificate delivery mode.
	PodCertificateSignerName = "agentmesh.dev/agent-identity"
	// DefaultServiceAccountName is the service account of pods that use an
	// identity whose spec.serviceAccountName is empty.
	DefaultServiceAccountName = "default"
)

// Reasons of a Denied or Failed PodCertificateRequest condition.
const (
	// PodCertificatePodNotFound: the request names a Pod that does not
	// exist, or exists with another UID.
	PodCertificatePodNotFound = "PodNotFound"
	// PodCertificateNoIdentity: the Pod is not labelled with an
	// AgentIdentity of its namespace, or the identity does not exist.
	PodCertificateNoIdentity = "IdentityNotFound"
	// PodCertificateWrongDelivery: the identity's keyDelivery is not
	// PodCertificate.
	PodCertificateWrongDelivery = "NotPodCertificateDelivery"
	// PodCertificateNotInjected: the Pod was not admitted by the injector
	// for the identity its label names now (it was relabelled, or created
	// while the webhook was not installed): its
	// mtls.agentmesh.dev/injected annotation is not that identity's
	// SPIFFE ID.
	PodCertificateNotInjected = "NotInjected"
	// PodCertificateServiceAccountMismatch: the Pod, the request and the
	// identity do not agree on the service account (name or UID).
	PodCertificateServiceAccountMismatch = "ServiceAccountMismatch"
	// PodCertificateNodeMismatch: the request's node is not the Pod's node
	// (name or UID).
	PodCertificateNodeMismatch = "NodeMismatch"
	// PodCertificateBadRequest: the stub PKCS#10 request does not parse or
	// does not prove possession of the key.
	PodCertificateBadRequest = "InvalidStubPKCS10Request"
	// PodCertificateCANotReady (Failed): the agent CA cannot sign.
	PodCertificateCANotReady = "CANotReady"
)
