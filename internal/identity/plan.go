package identity

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"slices"
	"time"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

// Observed is what is in place for one identity.
type Observed struct {
	// Data is the identity Secret's data; nil when there is no Secret.
	Data map[string][]byte
	// SpecHash is the Secret's spec-hash annotation.
	SpecHash string
	// EverIssued says a certificate was issued before (the status has a
	// serial number), to tell a first issuance from a repair.
	EverIssued bool
	// UID is the identity's UID, part of the renewal jitter seed.
	UID string
	// Failure is the last failed attempt, when the status reports one that
	// still stands for the current spec.
	Failure *Failure
	// Conflict says a Secret of the identity's name exists and is not
	// agentmesh's for this identity.
	Conflict bool
	// RenewRequest is the identity's mtls.agentmesh.dev/renew annotation:
	// a request to reissue now; empty when none is pending.
	RenewRequest string
	// RenewedFor is the Secret's mtls.agentmesh.dev/renewed-for
	// annotation: the request its certificate was issued for.
	RenewedFor string
	// Unchanged says the Secret holds exactly the data the operator wrote
	// (its data hash, recorded at the write, matches the data seen), in
	// which tls.key matched tls.crt: Data may then lack tls.key, and the
	// key is not parsed again. Everything else is checked as always.
	Unchanged bool
}

// Failure is a failed issuance the status reports: how many attempts in a
// row failed, when the last one did, and why (a condition reason:
// IssuanceFailed or SecretConflict).
type Failure struct {
	Attempts int32
	At       time.Time
	Reason   string
}

// Current is a certificate in place that is fit for use.
type Current struct {
	Leaf        *x509.Certificate
	Chain       []*x509.Certificate
	RenewalTime time.Time
	// CASerial is the serial of the CA that signed Leaf.
	CASerial string
}

// Plan is the one decision of a certificate pass, taken from what was
// observed; the controller carries it out.
type Plan struct {
	// Wait, when positive, is what remains of a failure's back-off: nothing
	// is attempted (and no failure counted) until then.
	Wait time.Duration
	// Conflict says the Secret name is taken: nothing is written.
	Conflict bool
	// Reissue says a new key and certificate must be issued, for Reason
	// (a condition reason) and Message (human readable, no key material).
	Reissue bool
	Reason  string
	Message string
	// KeepReady says the certificate in place stays usable while the
	// reissue is pending or failing: it is valid, trusted and fits the
	// spec, and is replaced only because its renewal is due or the CA that
	// signed it is being retired.
	KeepReady bool
	// Current is the certificate in place when it stays (Reissue false) or
	// stays usable until it is replaced (KeepReady).
	Current *Current
	// BundleStale says ca.crt differs from the current trust bundle and must
	// be rewritten, without reissuing.
	BundleStale bool
}

// ConflictPollMax bounds the back-off between looks at a Secret name that
// something else holds: that Secret is not watched, so its removal is
// noticed only by looking again.
const ConflictPollMax = 30 * time.Second

// Decide plans one pass over what is in place: a taken Secret name is a
// conflict; otherwise the reissue chain says reissue or keep. A failure's
// back-off holds a conflict or a reissue off until it ends.
func Decide(req Request, st *ca.State, obs Observed, now time.Time) Plan {
	p := decide(req, st, obs, now)
	if f := obs.Failure; f != nil && f.Attempts > 0 && (p.Conflict || p.Reissue) {
		wait := Backoff(f.Attempts)
		if f.Reason == mtlsv1alpha1.ReasonSecretConflict {
			wait = min(wait, ConflictPollMax)
		}
		p.Wait = max(0, f.At.Add(wait).Sub(now))
	}
	return p
}

func decide(req Request, st *ca.State, obs Observed, now time.Time) Plan {
	if obs.Conflict {
		return Plan{Conflict: true}
	}
	c := &checkContext{req: req, ca: st, obs: obs, now: now}
	for _, ch := range chain {
		if reason, msg := ch(c); reason != "" {
			p := Plan{Reissue: true, Reason: reason, Message: msg}
			if reason == mtlsv1alpha1.ReasonCARotated || reason == mtlsv1alpha1.ReasonRenewRequested ||
				(reason == mtlsv1alpha1.ReasonRenewing && now.Before(c.leaf.NotAfter)) {
				p.KeepReady, p.Current = true, c.current()
			}
			return p
		}
	}
	return Plan{Current: c.current(), BundleStale: !bytes.Equal(obs.Data[SecretTrustKey], st.BundlePEM())}
}

// RenewalFor computes the renewal time of leaf for req and the identity UID.
func RenewalFor(req Request, uid string, leaf *x509.Certificate) time.Time {
	return RenewalTime(leaf.NotBefore, leaf.NotAfter, req.RenewBefore, req.RenewBeforePercentage,
		Jitter(uid+"/"+ca.SerialHex(leaf.SerialNumber)))
}

// check is one link of the reissue chain: it returns a non-empty
// reason (and a message) when the Secret in place must be reissued.
type check func(c *checkContext) (reason, message string)

type checkContext struct {
	req   Request
	ca    *ca.State
	obs   Observed
	now   time.Time
	leaf  *x509.Certificate
	chain []*x509.Certificate
	// renewal is filled by the parse step for the later checks.
	renewal time.Time
}

// chain is the ordered reissue chain; the first check that fires
// decides the reason.
var chain = []check{
	secretMissing,
	parseAndMatchKey,
	wrongIdentity,
	wrongChain,
	untrustedCA,
	rotatedCA,
	specChanged,
	renewalDue,
	renewRequested,
}

func (c *checkContext) current() *Current {
	return &Current{Leaf: c.leaf, Chain: c.chain, RenewalTime: c.renewal, CASerial: c.ca.SignerSerial(c.leaf, c.chain)}
}

func secretMissing(c *checkContext) (string, string) {
	if c.obs.Data != nil {
		return "", ""
	}
	if !c.obs.EverIssued {
		return mtlsv1alpha1.ReasonPending, "issuing the first certificate"
	}
	return mtlsv1alpha1.ReasonSecretRepaired, "the Secret was missing"
}

func parseAndMatchKey(c *checkContext) (string, string) {
	certPEM := c.obs.Data[SecretCertKey]
	if len(certPEM) == 0 {
		return mtlsv1alpha1.ReasonSecretRepaired, "the Secret has no " + SecretCertKey
	}
	certs, err := ca.ParseCertificatesPEM(certPEM)
	if err != nil {
		return mtlsv1alpha1.ReasonSecretRepaired, fmt.Sprintf("%s cannot be parsed: %v", SecretCertKey, err)
	}
	if c.obs.Unchanged {
		c.leaf, c.chain = certs[0], certs[1:]
		c.renewal = RenewalFor(c.req, c.obs.UID, c.leaf)
		return "", ""
	}
	keyPEM := c.obs.Data[SecretKeyKey]
	if len(keyPEM) == 0 {
		return mtlsv1alpha1.ReasonSecretRepaired, "the Secret has no " + SecretKeyKey
	}
	key, err := ca.ParsePrivateKeyPEM(keyPEM)
	if err != nil {
		return mtlsv1alpha1.ReasonSecretRepaired, fmt.Sprintf("%s cannot be parsed: %v", SecretKeyKey, err)
	}
	if !ca.KeyMatchesCertificate(key, certs[0]) {
		return mtlsv1alpha1.ReasonSecretRepaired, fmt.Sprintf("%s does not match the certificate in %s", SecretKeyKey, SecretCertKey)
	}
	c.leaf, c.chain = certs[0], certs[1:]
	c.renewal = RenewalFor(c.req, c.obs.UID, c.leaf)
	return "", ""
}

func wrongIdentity(c *checkContext) (string, string) {
	if len(c.leaf.URIs) != 1 || c.leaf.URIs[0].String() != c.req.SPIFFEID.String() {
		return mtlsv1alpha1.ReasonSecretRepaired, fmt.Sprintf("%s holds a certificate for %v, not %s", SecretCertKey, c.leaf.URIs, c.req.SPIFFEID)
	}
	if c.leaf.IsCA {
		return mtlsv1alpha1.ReasonSecretRepaired, SecretCertKey + " holds a CA certificate"
	}
	return "", ""
}

func wrongChain(c *checkContext) (string, string) {
	want := ExpectedChain(c.ca)
	if !slices.EqualFunc(c.chain, want, func(a, b *x509.Certificate) bool { return a.Equal(b) }) {
		// A leaf from another CA has another chain too; let the CA checks
		// name the cause.
		if !c.ca.Trusts(c.leaf, c.chain) || !c.ca.SignedByActive(c.leaf) {
			return "", ""
		}
		return mtlsv1alpha1.ReasonSecretRepaired, fmt.Sprintf("the chain in %s is not the CA's chain", SecretCertKey)
	}
	return "", ""
}

func untrustedCA(c *checkContext) (string, string) {
	if !c.ca.Trusts(c.leaf, c.chain) {
		return mtlsv1alpha1.ReasonCAChanged, "the certificate was signed by a CA that is no longer trusted"
	}
	return "", ""
}

// rotatedCA reissues a certificate that a CA still trusted but no longer
// signing (retired by a rotation) signed.
func rotatedCA(c *checkContext) (string, string) {
	if !c.ca.SignedByActive(c.leaf) {
		return mtlsv1alpha1.ReasonCARotated, fmt.Sprintf("the certificate was signed by a CA that the rotation to CA %s retires", c.ca.Active.SerialHex())
	}
	return "", ""
}

func specChanged(c *checkContext) (string, string) {
	if c.obs.SpecHash != c.req.Hash() {
		return mtlsv1alpha1.ReasonSpecChanged, "the spec changed since the certificate was issued"
	}
	dns := slices.Clone(c.leaf.DNSNames)
	slices.Sort(dns)
	if !slices.Equal(dns, c.req.DNSNames) || !KeyMatchesRequest(c.leaf.PublicKey, c.req) {
		return mtlsv1alpha1.ReasonSpecChanged, "the certificate's DNS names or key type differ from the spec"
	}
	return "", ""
}

func renewalDue(c *checkContext) (string, string) {
	if !c.now.Before(c.leaf.NotAfter) {
		return mtlsv1alpha1.ReasonRenewing, "the certificate expired at " + c.leaf.NotAfter.UTC().Format(time.RFC3339)
	}
	if !c.now.Before(c.renewal) {
		return mtlsv1alpha1.ReasonRenewing, "renewal time " + c.renewal.UTC().Format(time.RFC3339) + " reached"
	}
	return "", ""
}

// renewRequested reissues a certificate that is fine in every other way
// when a renewal was asked for (mtls.agentmesh.dev/renew) and the
// certificate in place was not issued for that request.
func renewRequested(c *checkContext) (string, string) {
	if r := c.obs.RenewRequest; r != "" && r != c.obs.RenewedFor {
		return mtlsv1alpha1.ReasonRenewRequested, fmt.Sprintf("a renewal was requested (%s=%s)", mtlsv1alpha1.AnnotationRenew, r)
	}
	return "", ""
}

// RenewPending says a renew request is still to be acted on; once the
// certificate in place was issued for it (RenewedFor), the request is served
// and its annotation can go.
func (o Observed) RenewPending() bool {
	return o.RenewRequest != "" && o.RenewRequest != o.RenewedFor
}
