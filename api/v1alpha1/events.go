package v1alpha1

// Event reasons. Like condition reasons they are stable: alerts may match on
// them. Events about a condition's failure reuse its condition reason
// (PolicyInvalid, BundleInvalid, PolicyTooLarge on an AgentTrustPolicy;
// IdentityNotFound, NotInjected on a Pod; the PodCertificateRequest reasons
// on a Pod).
const (
	// On an AgentIdentity.
	EventIssued         = "Issued"
	EventRenewed        = "Renewed"
	EventReissued       = "Reissued"
	EventSecretRepaired = "SecretRepaired"
	EventIssuanceFailed = "IssuanceFailed"
	EventSecretConflict = "SecretConflict"
	EventInvalidSpec    = "InvalidSpec"

	// On the CA Secret: loading it.
	EventCACreated = "CACreated"
	EventCALoaded  = "CALoaded"
	EventCAInvalid = "CAInvalid"

	// On the CA Secret: the steps of a rotation.
	EventRotationRefused    = "RotationRefused"
	EventRotationStarted    = "RotationStarted"
	EventRotationEscalated  = "RotationEscalated"
	EventRotationAbandoned  = "RotationAbandoned"
	EventBundlesPropagated  = "BundlesPropagated"
	EventCAActivated        = "CAActivated"
	EventIdentitiesReissued = "IdentitiesReissued"
	EventCARetired          = "CARetired"
	// EventRotationStranded names the identities a rotation goes on
	// without (invalid spec, Secret name held by another Secret).
	EventRotationStranded = "RotationStranded"
	EventCAReplaced       = "CAReplaced"
	// EventEmergencyDeadlineReached (Warning): an emergency rotation's
	// deadline passed with bundles or leaves left behind; it went on
	// without them.
	EventEmergencyDeadlineReached = "EmergencyDeadlineReached"
)
