// Package webhookcert owns the webhook server's TLS: a dedicated webhook CA
// kept in a Secret (rolled over with an overlap, so that the API server
// always trusts the certificate it is shown), a serving certificate minted
// in memory by each replica and renewed before expiry, and the caBundle of
// the webhook configurations the operator owns. No cert-manager needed.
package webhookcert
