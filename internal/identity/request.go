package identity

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/apimachinery/pkg/util/validation/field"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/agentid"
)

// Bounds of the API, enforced again here because the reconciler never
// trusts that admission validation ran.
const (
	MinDuration     = time.Minute
	MaxDuration     = 720 * time.Hour
	DefaultDuration = 24 * time.Hour
	MinRenewBefore  = 10 * time.Second
	MaxDNSNames     = 32
	// DefaultRenewBeforePercentage renews half-way through the lifetime.
	DefaultRenewBeforePercentage = 50
)

// Request is everything a certificate is issued from, resolved from an
// AgentIdentity and the trust domain, defaults applied.
type Request struct {
	SPIFFEID     spiffeid.ID
	KeyDelivery  mtlsv1alpha1.KeyDelivery
	DNSNames     []string
	Duration     time.Duration
	KeyAlgorithm mtlsv1alpha1.PrivateKeyAlgorithm
	KeySize      int
	// RenewBefore and RenewBeforePercentage come from the spec; at most one
	// is set, and neither means DefaultRenewBeforePercentage.
	RenewBefore           *time.Duration
	RenewBeforePercentage *int32
}

// NewRequest validates the identity and resolves its issuance request.
// Validation errors name the field, like admission errors do.
func NewRequest(td spiffeid.TrustDomain, id *mtlsv1alpha1.AgentIdentity) (Request, error) {
	if errs := Validate(id); len(errs) > 0 {
		return Request{}, errs.ToAggregate()
	}
	sid, err := agentid.ID(td, id.Namespace, id.Name)
	if err != nil {
		return Request{}, fmt.Errorf("metadata.name: cannot form a SPIFFE ID: %w", err)
	}
	s := id.Spec
	r := Request{SPIFFEID: sid, Duration: DefaultDuration, KeyAlgorithm: mtlsv1alpha1.ECDSAKeyAlgorithm, KeyDelivery: s.KeyDelivery}
	if r.KeyDelivery == "" {
		r.KeyDelivery = mtlsv1alpha1.KeyDeliverySecret
	}
	if s.Duration != nil {
		r.Duration = s.Duration.Duration
	}
	if s.PrivateKey != nil {
		if s.PrivateKey.Algorithm != "" {
			r.KeyAlgorithm = s.PrivateKey.Algorithm
		}
		r.KeySize = int(s.PrivateKey.Size)
	}
	r.KeySize = defaultKeySize(r.KeyAlgorithm, r.KeySize)
	if r.KeyDelivery == mtlsv1alpha1.KeyDeliveryPodCertificate && r.KeyAlgorithm == mtlsv1alpha1.RSAKeyAlgorithm && r.KeySize == 2048 {
		// The kubelet generates no RSA key under 3072 bits.
		r.KeySize = 3072
	}
	r.DNSNames = slices.Clone(s.DNSNames)
	slices.Sort(r.DNSNames)
	r.DNSNames = slices.Compact(r.DNSNames)
	if s.RenewBefore != nil {
		d := s.RenewBefore.Duration
		r.RenewBefore = &d
	}
	if s.RenewBeforePercentage != nil {
		p := *s.RenewBeforePercentage
		r.RenewBeforePercentage = &p
	}
	return r, nil
}

func defaultKeySize(alg mtlsv1alpha1.PrivateKeyAlgorithm, size int) int {
	if size != 0 {
		return size
	}
	switch alg {
	case mtlsv1alpha1.ECDSAKeyAlgorithm:
		return 256
	case mtlsv1alpha1.RSAKeyAlgorithm:
		return 2048
	}
	return 0
}

// Hash identifies the fields a certificate is issued for (not the renewal
// settings, which do not change the certificate). A Secret whose spec-hash
// annotation differs was issued for another spec.
func (r Request) Hash() string {
	h := sha256.New()
	for _, part := range []string{
		r.SPIFFEID.String(), strings.Join(r.DNSNames, ","), string(r.KeyAlgorithm),
		strconv.Itoa(r.KeySize), r.Duration.String(),
	} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil))[:32]
}

// Validate checks an AgentIdentity the way the CRD schema does, for objects
// that reached the reconciler without that validation (an older CRD, a
// schema edited by hand). Errors name the field.
func Validate(id *mtlsv1alpha1.AgentIdentity) field.ErrorList {
	var errs field.ErrorList
	if msgs := validation.IsDNS1123Label(id.Name); len(msgs) > 0 {
		errs = append(errs, field.Invalid(field.NewPath("metadata", "name"), id.Name, strings.Join(msgs, "; ")))
	}
	spec := field.NewPath("spec")
	s := id.Spec
	if s.SecretName != "" {
		for _, m := range validation.IsDNS1123Subdomain(s.SecretName) {
			errs = append(errs, field.Invalid(spec.Child("secretName"), s.SecretName, m))
		}
	}
	if s.ServiceAccountName != "" {
		for _, m := range validation.IsDNS1123Subdomain(s.ServiceAccountName) {
			errs = append(errs, field.Invalid(spec.Child("serviceAccountName"), s.ServiceAccountName, m))
		}
	}
	if len(s.DNSNames) > MaxDNSNames {
		errs = append(errs, field.TooMany(spec.Child("dnsNames"), len(s.DNSNames), MaxDNSNames))
	}
	seen := map[string]bool{}
	for i, n := range s.DNSNames {
		p := spec.Child("dnsNames").Index(i)
		if seen[n] {
			errs = append(errs, field.Duplicate(p, n))
		}
		seen[n] = true
		for _, m := range validation.IsDNS1123Subdomain(strings.TrimPrefix(n, "*.")) {
			errs = append(errs, field.Invalid(p, n, m))
		}
	}
	switch s.KeyDelivery {
	case "", mtlsv1alpha1.KeyDeliverySecret, mtlsv1alpha1.KeyDeliveryPodCertificate:
	default:
		errs = append(errs, field.NotSupported(spec.Child("keyDelivery"), s.KeyDelivery,
			[]mtlsv1alpha1.KeyDelivery{mtlsv1alpha1.KeyDeliverySecret, mtlsv1alpha1.KeyDeliveryPodCertificate}))
	}
	duration := DefaultDuration
	if s.Duration != nil {
		duration = s.Duration.Duration
		if duration < MinDuration || duration > MaxDuration {
			errs = append(errs, field.Invalid(spec.Child("duration"), s.Duration.Duration.String(), "must be between 1m and 720h"))
		}
	}
	if s.RenewBefore != nil && s.RenewBeforePercentage != nil {
		errs = append(errs, field.Forbidden(spec.Child("renewBefore"), "set at most one of renewBefore and renewBeforePercentage"))
	}
	if s.RenewBefore != nil {
		rb := s.RenewBefore.Duration
		if rb < MinRenewBefore {
			errs = append(errs, field.Invalid(spec.Child("renewBefore"), rb.String(), "must be at least 10s"))
		} else if rb >= duration {
			errs = append(errs, field.Invalid(spec.Child("renewBefore"), rb.String(), "must be shorter than duration"))
		}
	}
	if p := s.RenewBeforePercentage; p != nil && (*p < 1 || *p > 99) {
		errs = append(errs, field.Invalid(spec.Child("renewBeforePercentage"), *p, "must be between 1 and 99"))
	}
	if k := s.PrivateKey; k != nil {
		kp := spec.Child("privateKey")
		switch k.Algorithm {
		case "", mtlsv1alpha1.ECDSAKeyAlgorithm:
			if k.Size != 0 && k.Size != 256 && k.Size != 384 {
				errs = append(errs, field.Invalid(kp.Child("size"), k.Size, "size must be 256 or 384 for ECDSA"))
			}
		case mtlsv1alpha1.RSAKeyAlgorithm:
			if k.Size != 0 && k.Size != 2048 && k.Size != 3072 && k.Size != 4096 {
				errs = append(errs, field.Invalid(kp.Child("size"), k.Size, "size must be 2048, 3072 or 4096 for RSA"))
			}
			if k.Size == 2048 && s.KeyDelivery == mtlsv1alpha1.KeyDeliveryPodCertificate {
				errs = append(errs, field.Invalid(kp.Child("size"), k.Size, "keyDelivery PodCertificate supports RSA keys of 3072 and 4096 bits only"))
			}
		case mtlsv1alpha1.Ed25519KeyAlgorithm:
			if k.Size != 0 {
				errs = append(errs, field.Invalid(kp.Child("size"), k.Size, "size must not be set for Ed25519"))
			}
		default:
			errs = append(errs, field.NotSupported(kp.Child("algorithm"), k.Algorithm, []mtlsv1alpha1.PrivateKeyAlgorithm{
				mtlsv1alpha1.ECDSAKeyAlgorithm, mtlsv1alpha1.Ed25519KeyAlgorithm, mtlsv1alpha1.RSAKeyAlgorithm}))
		}
	}
	return errs
}
