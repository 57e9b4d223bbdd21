// Package ca owns the agent CA: it bootstraps a self-signed root, loads and
// validates a CA from the data of a Secret (cert-manager compatible keys
// tls.crt, tls.key and ca.crt), signs leaf certificates, and assembles the
// trust bundle of the cluster's trust domain. It is pure: time is passed in
// and nothing here talks to the API server.
package ca
