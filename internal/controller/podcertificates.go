package controller

import (
	"context"
	"crypto/x509"
	"time"

	certv1 "k8s.io/api/certificates/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
)

// PodCertificate is the certificate a Pod holds: the latest issued
// PodCertificateRequest for that Pod, still valid.
type PodCertificate struct {
	Request *certv1.PodCertificateRequest
	Pod     *corev1.Pod
}

// CurrentPodCertificates lists, from the caches, the certificates held by
// the Pods of a namespace: per Pod UID the latest issued, unexpired
// request addressed to agentmesh's signer.
func CurrentPodCertificates(ctx context.Context, c client.Reader, namespace string, now time.Time) ([]PodCertificate, error) {
	list := &certv1.PodCertificateRequestList{}
	opts := []client.ListOption{client.UnsafeDisableDeepCopy}
	if namespace != "" {
		opts = append(opts, client.InNamespace(namespace))
	}
	if err := c.List(ctx, list, opts...); err != nil {
		return nil, err
	}
	latest := map[types.UID]*certv1.PodCertificateRequest{}
	for i := range list.Items {
		p := &list.Items[i]
		if p.Spec.SignerName != mtlsv1alpha1.PodCertificateSignerName ||
			!meta.IsStatusConditionTrue(p.Status.Conditions, certv1.PodCertificateRequestConditionTypeIssued) ||
			p.Status.NotAfter == nil || !now.Before(p.Status.NotAfter.Time) {
			continue
		}
		if prev, ok := latest[p.Spec.PodUID]; !ok || p.Status.NotBefore.After(prev.Status.NotBefore.Time) ||
			(p.Status.NotBefore.Equal(prev.Status.NotBefore) && p.CreationTimestamp.After(prev.CreationTimestamp.Time)) {
			latest[p.Spec.PodUID] = p
		}
	}
	out := make([]PodCertificate, 0, len(latest))
	for _, p := range latest {
		pod := &corev1.Pod{}
		if err := c.Get(ctx, types.NamespacedName{Namespace: p.Namespace, Name: p.Spec.PodName}, pod); err != nil || pod.UID != p.Spec.PodUID {
			continue
		}
		out = append(out, PodCertificate{Request: p, Pod: pod})
	}
	return out, nil
}

// CountPodCertificates counts the Pods of an identity that hold a current
// certificate, and the earliest refresh among them.
func CountPodCertificates(ctx context.Context, c client.Reader, id *mtlsv1alpha1.AgentIdentity, now time.Time) (int32, *metav1.Time, error) {
	certs, err := CurrentPodCertificates(ctx, c, id.Namespace, now)
	if err != nil {
		return 0, nil, err
	}
	var count int32
	var next *metav1.Time
	for _, pc := range certs {
		if pc.Pod.Labels[mtlsv1alpha1.LabelIdentity] != id.Name {
			continue
		}
		count++
		if r := pc.Request.Status.BeginRefreshAt; r != nil && (next == nil || r.Before(next)) {
			t := *r
			next = &t
		}
	}
	return count, next, nil
}

// leafOf parses the leaf of an issued request.
func leafOf(p *certv1.PodCertificateRequest) (*x509.Certificate, error) {
	certs, err := ca.ParseCertificatesPEM([]byte(p.Status.CertificateChain))
	if err != nil {
		return nil, err
	}
	return certs[0], nil
}
