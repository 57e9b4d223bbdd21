// Package agenttlstest helps test agents and tools that use agenttls: it
// creates CAs and SPIFFE X.509-SVIDs, renders bundle.pem and policy.json as
// the agentmesh operator does, and lays out and updates a directory exactly
// as the kubelet updates a projected volume (AtomicWriter). Its functions
// return errors rather than taking a testing.TB, so that a program (a local
// pod runner, say) can use them too.
package agenttlstest
