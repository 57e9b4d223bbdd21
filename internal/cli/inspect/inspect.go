// Package inspect summarises one AgentIdentity for kubectl-agentmesh
// inspect identity: its SPIFFE ID, the certificate in place (never the
// key), whether the Secret agrees with the status, the renewal time, the
// effective policy, the policies that select it and the Pods that use it.
// It is pure: the command reads the objects.
package inspect

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/internal/cli/output"
	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// Input is what the command read for one identity. Secret and TrustConfigMap
// are nil when they do not exist (or could not be read: ReadErrors says why).
type Input struct {
	Now            time.Time
	Identity       *mtlsv1alpha1.AgentIdentity
	Secret         *corev1.Secret
	TrustConfigMap *corev1.ConfigMap
	Pods           []corev1.Pod
	// ReadErrors are objects that could not be read, by what they are.
	ReadErrors map[string]string
}

// Summary is what inspect shows.
type Summary struct {
	Namespace   string      `json:"namespace"`
	Name        string      `json:"name"`
	SPIFFEID    string      `json:"spiffeID"`
	KeyDelivery string      `json:"keyDelivery"`
	Ready       string      `json:"ready"`
	Reason      string      `json:"reason,omitempty"`
	Message     string      `json:"message,omitempty"`
	Conditions  []Condition `json:"conditions,omitempty"`
	// Secret is the identity Secret's name; SecretFound says it exists.
	Secret      string       `json:"secret,omitempty"`
	SecretFound bool         `json:"secretFound"`
	Certificate *Certificate `json:"certificate,omitempty"`
	// SecretMatchesStatus says the certificate in the Secret is the one the
	// status reports (serial, validity, CA); Mismatches say where not.
	SecretMatchesStatus bool     `json:"secretMatchesStatus"`
	Mismatches          []string `json:"mismatches,omitempty"`
	// KeyMatches says the Secret's key belongs to its certificate (the key
	// itself is never shown).
	KeyMatches  *bool      `json:"keyMatchesCertificate,omitempty"`
	RenewalTime *time.Time `json:"renewalTime,omitempty"`
	// RenewRequested is the pending renew annotation's value.
	RenewRequested string `json:"renewRequested,omitempty"`
	// PodCertificates and NextRefresh, in PodCertificate delivery.
	PodCertificates int32      `json:"podCertificates,omitempty"`
	NextRefresh     *time.Time `json:"nextRefreshTime,omitempty"`
	TrustConfigMap  string     `json:"trustConfigMap,omitempty"`
	// Policies are the AgentTrustPolicies that select the identity.
	Policies     []string   `json:"policies"`
	Ingress      *Direction `json:"ingress,omitempty"`
	Egress       *Direction `json:"egress,omitempty"`
	TrustDomains []string   `json:"trustDomains,omitempty"`
	Pods         []Pod      `json:"pods"`
	Problems     []string   `json:"problems"`
}

// Condition is one status condition.
type Condition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message,omitempty"`
}

// Certificate describes the leaf in place. It holds no key material.
type Certificate struct {
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"notBefore"`
	NotAfter  time.Time `json:"notAfter"`
	KeyType   string    `json:"keyType"`
	URIs      []string  `json:"uris"`
	DNSNames  []string  `json:"dnsNames,omitempty"`
	// Issuer is the issuing CA's subject; CASerial its serial as the
	// status reports it.
	Issuer   string `json:"issuer"`
	CASerial string `json:"caSerial,omitempty"`
	// Chain is how many CA certificates follow the leaf.
	Chain int `json:"chain"`
}

// Direction summarises one direction of policy.json.
type Direction struct {
	Mode      string   `json:"mode"`
	AllowAll  bool     `json:"allowAll"`
	SPIFFEIDs []string `json:"spiffeIDs,omitempty"`
	Prefixes  []string `json:"prefixes,omitempty"`
	Policies  []string `json:"policies,omitempty"`
	Default   string   `json:"default,omitempty"`
}

// Pod is a Pod that carries the identity's label.
type Pod struct {
	Name  string `json:"name"`
	Phase string `json:"phase"`
	Node  string `json:"node,omitempty"`
	// Injected is the SPIFFE ID the injector wired in; empty when the Pod
	// was not injected.
	Injected string `json:"injected,omitempty"`
}

// Summarize builds the summary of one identity.
func Summarize(in Input) *Summary {
	id := in.Identity
	s := &Summary{
		Namespace: id.Namespace, Name: id.Name, SPIFFEID: id.Status.SPIFFEID,
		KeyDelivery: string(id.Spec.KeyDelivery), Secret: id.EffectiveSecretName(),
		TrustConfigMap: id.Status.TrustConfigMap, Policies: slices.Clone(id.Status.Policies),
		PodCertificates: id.Status.PodCertificates, Problems: []string{}, Pods: []Pod{},
		RenewRequested: id.Annotations[mtlsv1alpha1.AnnotationRenew],
	}
	if s.Policies == nil {
		s.Policies = []string{}
	}
	if s.KeyDelivery == "" {
		s.KeyDelivery = string(mtlsv1alpha1.KeyDeliverySecret)
	}
	for _, c := range id.Status.Conditions {
		s.Conditions = append(s.Conditions, Condition{Type: c.Type, Status: string(c.Status), Reason: c.Reason, Message: c.Message})
	}
	if c := meta.FindStatusCondition(id.Status.Conditions, mtlsv1alpha1.ConditionReady); c != nil {
		s.Ready, s.Reason, s.Message = string(c.Status), c.Reason, c.Message
		if c.ObservedGeneration != id.Generation {
			s.problem("the Ready condition is for generation %d, the spec is at %d: the operator has not caught up", c.ObservedGeneration, id.Generation)
		}
	} else {
		s.Ready = "Unknown"
		s.problem("AgentIdentity %s/%s has no Ready condition: is the operator running?", id.Namespace, id.Name)
	}
	if s.Ready == "False" {
		s.problem("not Ready (%s): %s", s.Reason, s.Message)
	}
	if t := id.Status.RenewalTime; t != nil {
		rt := t.UTC()
		s.RenewalTime = &rt
	}
	if t := id.Status.NextRefreshTime; t != nil {
		nr := t.UTC()
		s.NextRefresh = &nr
	}
	for what, msg := range in.ReadErrors {
		s.problem("%s: %s", what, msg)
	}
	if id.Spec.KeyDelivery != mtlsv1alpha1.KeyDeliveryPodCertificate {
		s.summarizeSecret(in)
	}
	s.summarizePolicy(in)
	for _, p := range in.Pods {
		s.Pods = append(s.Pods, Pod{Name: p.Name, Phase: string(p.Status.Phase), Node: p.Spec.NodeName,
			Injected: p.Annotations[mtlsv1alpha1.AnnotationInjected]})
		if inj := p.Annotations[mtlsv1alpha1.AnnotationInjected]; inj == "" {
			s.problem("Pod %s carries the label but was not injected: recreate it with the webhook in place", p.Name)
		} else if s.SPIFFEID != "" && inj != s.SPIFFEID {
			s.problem("Pod %s was injected for %s, not %s", p.Name, inj, s.SPIFFEID)
		}
	}
	slices.SortFunc(s.Pods, func(a, b Pod) int { return strings.Compare(a.Name, b.Name) })
	slices.Sort(s.Problems)
	return s
}

func (s *Summary) summarizeSecret(in Input) {
	id := in.Identity
	if in.Secret == nil {
		if _, failed := in.ReadErrors["Secret "+s.Secret]; !failed {
			s.problem("Secret %s/%s does not exist", id.Namespace, s.Secret)
		}
		return
	}
	s.SecretFound = true
	certs, err := ca.ParseCertificatesPEM(in.Secret.Data[mtlsv1alpha1.SecretCertKey])
	if err != nil {
		s.problem("Secret %s/%s: %s cannot be parsed: %v", id.Namespace, s.Secret, mtlsv1alpha1.SecretCertKey, err)
		return
	}
	leaf := certs[0]
	c := &Certificate{
		Serial: ca.SerialHex(leaf.SerialNumber), NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(),
		KeyType: KeyType(leaf), DNSNames: leaf.DNSNames, Issuer: leaf.Issuer.String(), CASerial: id.Status.CASerial, Chain: len(certs) - 1,
	}
	for _, u := range leaf.URIs {
		c.URIs = append(c.URIs, u.String())
	}
	s.Certificate = c
	if key, err := ca.ParsePrivateKeyPEM(in.Secret.Data[mtlsv1alpha1.SecretKeyKey]); err == nil {
		m := ca.KeyMatchesCertificate(key, leaf)
		s.KeyMatches = &m
		if !m {
			s.problem("Secret %s/%s: %s does not belong to the certificate", id.Namespace, s.Secret, mtlsv1alpha1.SecretKeyKey)
		}
	} else {
		f := false
		s.KeyMatches = &f
		// The parse error never quotes the key.
		s.problem("Secret %s/%s: %s cannot be parsed", id.Namespace, s.Secret, mtlsv1alpha1.SecretKeyKey)
	}
	st := id.Status
	if st.SerialNumber != c.Serial {
		s.mismatch("serial: Secret %s, status %s", c.Serial, orNone(st.SerialNumber))
	}
	if st.NotAfter == nil || !st.NotAfter.Time.Equal(leaf.NotAfter.Truncate(time.Second)) {
		s.mismatch("notAfter: Secret %s, status %s", c.NotAfter.Format(time.RFC3339), timeOrNone(st.NotAfter))
	}
	if want := st.SPIFFEID; want != "" && (len(c.URIs) != 1 || c.URIs[0] != want) {
		s.mismatch("SPIFFE ID: Secret %s, status %s", strings.Join(c.URIs, ","), want)
	}
	if a := in.Secret.Annotations[mtlsv1alpha1.AnnotationSPIFFEID]; st.SPIFFEID != "" && a != st.SPIFFEID {
		s.mismatch("annotation %s: %s, status %s", mtlsv1alpha1.AnnotationSPIFFEID, orNone(a), st.SPIFFEID)
	}
	s.SecretMatchesStatus = len(s.Mismatches) == 0
	if !s.SecretMatchesStatus {
		s.problem("Secret %s/%s does not match the status (%s): the operator is updating it, or it was edited", id.Namespace, s.Secret, strings.Join(s.Mismatches, "; "))
	}
	if !in.Now.Before(leaf.NotAfter) {
		s.problem("the certificate %s expired at %s", c.Serial, c.NotAfter.Format(time.RFC3339))
	}
}

func (s *Summary) summarizePolicy(in Input) {
	cm := in.TrustConfigMap
	if cm == nil {
		if _, failed := in.ReadErrors["ConfigMap "+in.Identity.TrustConfigMapName()]; !failed {
			s.problem("trust ConfigMap %s/%s does not exist", in.Identity.Namespace, in.Identity.TrustConfigMapName())
		}
		return
	}
	p, err := agenttls.ParsePolicy([]byte(cm.Data[mtlsv1alpha1.TrustPolicyKey]))
	if err != nil {
		s.problem("ConfigMap %s/%s: %v", cm.Namespace, cm.Name, err)
		return
	}
	s.Ingress, s.Egress = direction(p.Ingress), direction(p.Egress)
	for td := range p.TrustDomains {
		s.TrustDomains = append(s.TrustDomains, td)
	}
	slices.Sort(s.TrustDomains)
}

func direction(r agenttls.Rules) *Direction {
	return &Direction{Mode: string(r.Mode), AllowAll: r.AllowAll, SPIFFEIDs: r.SPIFFEIDs, Prefixes: r.Prefixes, Policies: r.Policies, Default: r.Default}
}

func (s *Summary) problem(format string, args ...any) {
	s.Problems = append(s.Problems, fmt.Sprintf(format, args...))
}

func (s *Summary) mismatch(format string, args ...any) {
	s.Mismatches = append(s.Mismatches, fmt.Sprintf(format, args...))
}

// KeyType names the certificate's public key: "ECDSA P-256", "Ed25519",
// "RSA 2048".
func KeyType(c *x509.Certificate) string {
	switch k := c.PublicKey.(type) {
	case *ecdsa.PublicKey:
		return "ECDSA " + k.Curve.Params().Name
	case ed25519.PublicKey:
		return "Ed25519"
	case *rsa.PublicKey:
		return "RSA " + strconv.Itoa(k.N.BitLen())
	}
	return c.PublicKeyAlgorithm.String()
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

func timeOrNone(t *metav1.Time) string {
	if t == nil {
		return "none"
	}
	return t.UTC().Format(time.RFC3339)
}

// WriteHuman prints the summary.
func (s *Summary) WriteHuman(w io.Writer) error {
	kv := [][2]string{
		{"Identity", s.Namespace + "/" + s.Name},
		{"SPIFFE ID", s.SPIFFEID},
		{"Ready", joinNonEmpty(" ", s.Ready, paren(s.Reason))},
		{"Key delivery", s.KeyDelivery},
	}
	if s.KeyDelivery == string(mtlsv1alpha1.KeyDeliveryPodCertificate) {
		kv = append(kv, [2]string{"Pod certificates", strconv.Itoa(int(s.PodCertificates))}, [2]string{"Next refresh", fmtTime(s.NextRefresh)})
	} else {
		secret := s.Secret
		if !s.SecretFound {
			secret += " (missing)"
		}
		kv = append(kv, [2]string{"Secret", secret})
		if c := s.Certificate; c != nil {
			match := "yes"
			if !s.SecretMatchesStatus {
				match = "no: " + strings.Join(s.Mismatches, "; ")
			}
			keyMatch := "-"
			if s.KeyMatches != nil {
				keyMatch = map[bool]string{true: "yes", false: "no"}[*s.KeyMatches]
			}
			kv = append(kv,
				[2]string{"Serial", c.Serial},
				[2]string{"Valid", c.NotBefore.Format(time.RFC3339) + " to " + c.NotAfter.Format(time.RFC3339)},
				[2]string{"Key type", c.KeyType},
				[2]string{"URI SANs", strings.Join(c.URIs, ", ")},
				[2]string{"DNS SANs", strings.Join(c.DNSNames, ", ")},
				[2]string{"Issuer", joinNonEmpty(" ", c.Issuer, paren(prefixed("serial ", c.CASerial)))},
				[2]string{"Chain", fmt.Sprintf("%d CA certificate(s) after the leaf", c.Chain)},
				[2]string{"Key matches", keyMatch},
				[2]string{"Matches status", match},
			)
		}
		kv = append(kv, [2]string{"Renewal", fmtTime(s.RenewalTime)})
	}
	if s.RenewRequested != "" {
		kv = append(kv, [2]string{"Renew requested", s.RenewRequested})
	}
	kv = append(kv, [2]string{"Trust ConfigMap", s.TrustConfigMap}, [2]string{"Policies", strings.Join(s.Policies, ", ")},
		[2]string{"Trust domains", strings.Join(s.TrustDomains, ", ")})
	if err := output.Fields(w, kv); err != nil {
		return err
	}
	if s.Ingress != nil {
		if _, err := fmt.Fprintln(w); err != nil {
			return err
		}
		t := &output.Table{Header: []string{"direction", "mode", "allows", "policies"}}
		t.Add("ingress", s.Ingress.Mode, allows(s.Ingress), governedBy(s.Ingress))
		t.Add("egress", s.Egress.Mode, allows(s.Egress), governedBy(s.Egress))
		if err := t.Write(w); err != nil {
			return err
		}
	}
	if len(s.Conditions) > 0 {
		if _, err := fmt.Fprintln(w); err != nil {
			return err
		}
		t := &output.Table{Header: []string{"condition", "status", "reason", "message"}}
		for _, c := range s.Conditions {
			t.Add(c.Type, c.Status, c.Reason, c.Message)
		}
		if err := t.Write(w); err != nil {
			return err
		}
	}
	if _, err := fmt.Fprintln(w); err != nil {
		return err
	}
	if len(s.Pods) == 0 {
		if _, err := fmt.Fprintln(w, "No Pods use this identity."); err != nil {
			return err
		}
	} else {
		t := &output.Table{Header: []string{"pod", "phase", "node", "injected"}}
		for _, p := range s.Pods {
			t.Add(p.Name, p.Phase, p.Node, p.Injected)
		}
		if err := t.Write(w); err != nil {
			return err
		}
	}
	for _, p := range s.Problems {
		if _, err := fmt.Fprintf(w, "problem: %s\n", p); err != nil {
			return err
		}
	}
	return nil
}

func allows(d *Direction) string {
	if d.AllowAll {
		return "every authenticated peer"
	}
	parts := slices.Clone(d.SPIFFEIDs)
	for _, p := range d.Prefixes {
		parts = append(parts, p+"*")
	}
	if len(parts) == 0 {
		return "nobody"
	}
	return strings.Join(parts, ", ")
}

func governedBy(d *Direction) string {
	if len(d.Policies) == 0 && d.Default != "" {
		return "(default: " + d.Default + ")"
	}
	return strings.Join(d.Policies, ", ")
}

func fmtTime(t *time.Time) string {
	if t == nil {
		return ""
	}
	return t.UTC().Format(time.RFC3339)
}

func prefixed(p, s string) string {
	if s == "" {
		return ""
	}
	return p + s
}

func paren(s string) string {
	if s == "" {
		return ""
	}
	return "(" + s + ")"
}

func joinNonEmpty(sep string, parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, sep)
}
