package agenttls_test

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// exampleVolumes writes the volumes of the worker and the planner under
// root, as the operator and the kubelet would, and returns their paths.
func exampleVolumes(root string) (workerDir, plannerDir string, err error) {
	ca, err := agenttlstest.NewCA(spiffeid.RequireTrustDomainFromString("cluster.local"))
	if err != nil {
		return "", "", err
	}
	write := func(id spiffeid.ID, p *agenttls.Policy) (string, error) {
		leaf, err := ca.Issue(id)
		if err != nil {
			return "", err
		}
		trust, err := agenttlstest.RenderTrust(p, map[spiffeid.TrustDomain][]*x509.Certificate{ca.TrustDomain: {ca.Root}})
		if err != nil {
			return "", err
		}
		payload, err := agenttlstest.Payload(leaf, trust)
		if err != nil {
			return "", err
		}
		w, err := agenttlstest.NewAtomicWriter(filepath.Join(root, filepath.Base(id.Path())))
		if err != nil {
			return "", err
		}
		return w.Dir(), w.Write(payload)
	}
	worker := spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/worker")
	planner := spiffeid.RequireFromString("spiffe://cluster.local/ns/agents/agent/planner")
	// The worker lets the planner in, and nobody else.
	pw := agenttlstest.DefaultPolicy(worker)
	pw.Ingress = agenttls.Rules{Mode: agenttls.ModeEnforce, SPIFFEIDs: []string{planner.String()}, Policies: []string{"worker-ingress"}}
	if workerDir, err = write(worker, pw); err != nil {
		return "", "", err
	}
	plannerDir, err = write(planner, agenttlstest.DefaultPolicy(planner))
	return workerDir, plannerDir, err
}

// An HTTPS server and client with agentmesh identities. In a Pod,
// agenttls.NewSource() with no options reads the AGENTMESH_* variables.
func Example() {
	root, err := os.MkdirTemp("", "agenttls-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(root)
	workerDir, plannerDir, err := exampleVolumes(root)
	if err != nil {
		fmt.Println(err)
		return
	}
	quiet := agenttls.WithLogger(slog.New(slog.DiscardHandler))

	// The worker serves HTTPS; its ingress policy decides who gets in.
	worker, err := agenttls.NewSource(agenttls.WithDir(workerDir), quiet)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer worker.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Println(err)
		return
	}
	srv := worker.NewServer(ln.Addr().String(), http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer, err := agenttls.PeerID(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "hello %s", peer)
	}))
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()

	// The planner calls it; its egress policy decides where it may go.
	planner, err := agenttls.NewSource(agenttls.WithDir(plannerDir), quiet)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer planner.Close()
	client := planner.NewHTTPClient(agenttls.WithServerID(worker.ID()))
	defer client.CloseIdleConnections()
	resp, err := client.Get("https://" + ln.Addr().String() + "/")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		fmt.Println(err)
		return
	}
	server, err := agenttls.PeerIDFromConnectionState(*resp.TLS)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(string(body))
	fmt.Println("served by", server)
	// Output:
	// hello spiffe://cluster.local/ns/agents/agent/planner
	// served by spiffe://cluster.local/ns/agents/agent/worker
}

// A Source is a go-spiffe X.509-SVID and bundle source: code written against
// go-spiffe's tlsconfig works with agentmesh files unchanged,
// Source.Authorizer enforces policy.json there, and GuardResumption checks
// resumed sessions too.
func Example_goSPIFFE() {
	root, err := os.MkdirTemp("", "agenttls-example")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer os.RemoveAll(root)
	workerDir, plannerDir, err := exampleVolumes(root)
	if err != nil {
		fmt.Println(err)
		return
	}
	quiet := agenttls.WithLogger(slog.New(slog.DiscardHandler))
	worker, err := agenttls.NewSource(agenttls.WithDir(workerDir), quiet)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer worker.Close()
	planner, err := agenttls.NewSource(agenttls.WithDir(plannerDir), quiet)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer planner.Close()

	cfg := worker.GuardResumption(tlsconfig.MTLSServerConfig(worker, worker, worker.Authorizer(agenttls.Ingress)), agenttls.Ingress)
	ln, err := tls.Listen("tcp", "127.0.0.1:0", cfg)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		if err := c.(*tls.Conn).Handshake(); err != nil {
			return
		}
		peer, _ := agenttls.PeerIDFromConnectionState(c.(*tls.Conn).ConnectionState())
		fmt.Fprintf(c, "hello %s\n", peer)
	}()

	conn, err := tls.Dial("tcp", ln.Addr().String(), tlsconfig.MTLSClientConfig(planner, planner, tlsconfig.AuthorizeID(worker.ID())))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
	line, err := io.ReadAll(conn)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Print(string(line))
	// Output: hello spiffe://cluster.local/ns/agents/agent/planner
}

func ExamplePolicy_Check() {
	p, err := agenttls.ParsePolicy([]byte(`{
  "version": "agentmesh.dev/policy/v1",
  "spiffeID": "spiffe://cluster.local/ns/agents/agent/worker",
  "trustDomain": "cluster.local",
  "ingress": {"mode": "Enforce", "allowAll": false, "spiffeIDs": [],
    "prefixes": ["spiffe://cluster.local/ns/research/"], "policies": ["worker-research"]},
  "egress": {"mode": "Enforce", "allowAll": false, "spiffeIDs": [],
    "prefixes": ["spiffe://cluster.local/"], "policies": [], "default": "allow-authenticated"},
  "trustDomains": {"cluster.local": []}
}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(p.Check(agenttls.Ingress, spiffeid.RequireFromString("spiffe://cluster.local/ns/research/agent/a")))
	fmt.Println(p.Check(agenttls.Ingress, spiffeid.RequireFromString("spiffe://cluster.local/ns/research-evil/agent/a")))
	fmt.Println(p.Check(agenttls.Egress, spiffeid.RequireFromString("spiffe://partner.example/ns/ops/agent/auditor")))
	// Output:
	// <nil>
	// agentmesh: ingress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow spiffe://cluster.local/ns/research-evil/agent/a (policies: worker-research)
	// agentmesh: egress policy of spiffe://cluster.local/ns/agents/agent/worker does not allow spiffe://partner.example/ns/ops/agent/auditor (default posture: allow-authenticated)
}
