package podrunner

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// credential is the state of one podCertificate projection.
type credential struct {
	keyPEM, chainPEM []byte
	refreshAt        time.Time
	// pending is the request under way and its key.
	pending    string
	pendingKey crypto.Signer
	retryAt    time.Time
}

// podCertificate brings a podCertificate projection up to date and reports
// whether the volume has a certificate to show.
func (r *Runner) podCertificate(ctx context.Context, kp *corev1.Pod, src *corev1.PodCertificateProjection, c *credential) bool {
	now := time.Now()
	if c.pending != "" {
		pcr, err := r.Client.CertificatesV1().PodCertificateRequests(kp.Namespace).Get(ctx, c.pending, metav1.GetOptions{})
		switch {
		case err != nil:
		case meta.IsStatusConditionTrue(pcr.Status.Conditions, certv1.PodCertificateRequestConditionTypeIssued):
			der, err := x509.MarshalPKCS8PrivateKey(c.pendingKey)
			if err == nil {
				c.keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
				c.chainPEM = []byte(pcr.Status.CertificateChain)
				c.refreshAt = pcr.Status.BeginRefreshAt.Time
			}
			c.pending, c.pendingKey = "", nil
		case len(pcr.Status.Conditions) > 0:
			fmt.Fprintf(os.Stderr, "podrunner: PodCertificateRequest %s for pod %s: %s: %s\n",
				pcr.Name, kp.Name, pcr.Status.Conditions[0].Reason, pcr.Status.Conditions[0].Message)
			c.pending, c.pendingKey, c.retryAt = "", nil, now.Add(5*time.Second)
		}
	}
	due := c.keyPEM == nil || !now.Before(c.refreshAt)
	if due && c.pending == "" && !now.Before(c.retryAt) {
		if err := r.requestCertificate(ctx, kp, src, c); err != nil {
			fmt.Fprintf(os.Stderr, "podrunner: requesting a certificate for pod %s: %v\n", kp.Name, err)
			c.retryAt = now.Add(5 * time.Second)
		}
	}
	return c.keyPEM != nil
}

func (r *Runner) requestCertificate(ctx context.Context, kp *corev1.Pod, src *corev1.PodCertificateProjection, c *credential) error {
	key, err := generateKey(src.KeyType)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		return err
	}
	saName := kp.Spec.ServiceAccountName
	if saName == "" {
		saName = "default"
	}
	sa, err := r.Client.CoreV1().ServiceAccounts(kp.Namespace).Get(ctx, saName, metav1.GetOptions{})
	if err != nil {
		return err
	}
	pcr, err := r.Client.CertificatesV1().PodCertificateRequests(kp.Namespace).Create(ctx, &certv1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: kp.Name + "-", Namespace: kp.Namespace},
		Spec: certv1.PodCertificateRequestSpec{
			SignerName: src.SignerName,
			PodName:    kp.Name, PodUID: kp.UID,
			ServiceAccountName: saName, ServiceAccountUID: sa.UID,
			NodeName: types.NodeName(r.node.Name), NodeUID: r.node.UID,
			MaxExpirationSeconds: src.MaxExpirationSeconds,
			StubPKCS10Request:    csr,
		},
	}, metav1.CreateOptions{})
	if err != nil {
		return err
	}
	c.pending, c.pendingKey = pcr.Name, key
	return nil
}

// generateKey generates a key of a podCertificate keyType.
func generateKey(keyType string) (crypto.Signer, error) {
	switch keyType {
	case "ECDSAP256":
		return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ECDSAP384":
		return ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	case "ECDSAP521":
		return ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	case "ED25519":
		_, k, err := ed25519.GenerateKey(rand.Reader)
		return k, err
	case "RSA3072":
		return rsa.GenerateKey(rand.Reader, 3072)
	case "RSA4096":
		return rsa.GenerateKey(rand.Reader, 4096)
	}
	return nil, fmt.Errorf("unknown key type %q", keyType)
}
