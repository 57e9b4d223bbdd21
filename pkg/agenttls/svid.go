package agenttls

import (
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
)

// checkSVIDLeaf applies what the X.509-SVID specification requires of a
// leaf, for the agent's own certificate and for every peer's alike:
//
//   - not a CA, and neither keyCertSign nor cRLSign (go-spiffe checks these
//     too; they are repeated so the rule is in one place);
//   - the digitalSignature key usage, without which the key may not sign a
//     TLS handshake;
//   - when the extended key usage extension is present, both
//     id-kp-serverAuth and id-kp-clientAuth (or anyExtendedKeyUsage): an
//     SVID authenticates either end of a connection. A leaf without the
//     extension is accepted, as the specification allows.
//
// A leaf issued for some other purpose (code signing, e-mail) by a CA the
// bundle trusts is therefore not an identity here.
func checkSVIDLeaf(leaf *x509.Certificate) error {
	switch {
	case leaf.IsCA:
		return errors.New("is a CA certificate")
	case leaf.KeyUsage&(x509.KeyUsageCertSign|x509.KeyUsageCRLSign) != 0:
		return errors.New("has the keyCertSign or cRLSign key usage")
	case leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0:
		return errors.New("lacks the digitalSignature key usage")
	}
	if len(leaf.ExtKeyUsage) == 0 && len(leaf.UnknownExtKeyUsage) == 0 {
		return nil
	}
	if slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageAny) {
		return nil
	}
	for _, want := range []struct {
		usage x509.ExtKeyUsage
		name  string
	}{{x509.ExtKeyUsageServerAuth, "serverAuth"}, {x509.ExtKeyUsageClientAuth, "clientAuth"}} {
		if !slices.Contains(leaf.ExtKeyUsage, want.usage) {
			return fmt.Errorf("has an extended key usage without %s", want.name)
		}
	}
	return nil
}
