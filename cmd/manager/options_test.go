package main

import (
	"io"
	"strings"
	"testing"
)

func TestParseFlagsDefaults(t *testing.T) {
	o, err := parseFlags(nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.trustDomain.String() != "cluster.local" {
		t.Errorf("trust domain = %q, want cluster.local", o.trustDomain)
	}
	if o.caSecret.String() != "agentmesh-system/agentmesh-ca" {
		t.Errorf("CA secret = %q, want agentmesh-system/agentmesh-ca", o.caSecret)
	}
	if o.leaderElectionNamespace != "agentmesh-system" {
		t.Errorf("leader election namespace = %q, want agentmesh-system", o.leaderElectionNamespace)
	}
	if o.kubeAPIQPS != 200 || o.kubeAPIBurst != 400 {
		t.Errorf("qps/burst = %v/%d, want 200/400", o.kubeAPIQPS, o.kubeAPIBurst)
	}
	if o.webhookCASecret.String() != "agentmesh-system/agentmesh-webhook-ca" || o.webhookConfigName != "agentmesh" ||
		strings.Join(o.webhookHosts, ",") != "agentmesh-webhook.agentmesh-system.svc,agentmesh-webhook.agentmesh-system.svc.cluster.local" {
		t.Errorf("webhook defaults: %v %q %v", o.webhookCASecret, o.webhookConfigName, o.webhookHosts)
	}
	if o.defaultPolicy != "allow-authenticated" {
		t.Errorf("default policy = %q", o.defaultPolicy)
	}
	if o.webhookPort != 9443 || o.maxConcurrentReconciles != 8 {
		t.Errorf("webhook port %d, concurrency %d", o.webhookPort, o.maxConcurrentReconciles)
	}
	if o.dns.ClusterDomain != "cluster.local" || len(o.dns.Allowed) != 0 {
		t.Errorf("DNS scope %+v, want cluster.local and no allow-list", o.dns)
	}
}

func TestParseFlagsValues(t *testing.T) {
	o, err := parseFlags([]string{
		"--trust-domain=prod.example.com", "--ca-secret=mesh/root-ca", "--kube-api-qps=50", "--kube-api-burst=50",
		"--leader-elect", "--max-concurrent-reconciles=32", "--zap-log-level=debug",
		"--cluster-domain=corp.internal", "--allowed-dns-names=api.example.com, *.partner.example",
	}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.trustDomain.String() != "prod.example.com" || o.caSecret.Namespace != "mesh" || o.caSecret.Name != "root-ca" ||
		o.leaderElectionNamespace != "mesh" || !o.leaderElect || o.maxConcurrentReconciles != 32 || o.kubeAPIQPS != 50 {
		t.Errorf("parsed %+v", o)
	}
	if o.dns.ClusterDomain != "corp.internal" || strings.Join(o.dns.Allowed, ",") != "api.example.com,*.partner.example" ||
		o.webhookHosts[1] != "agentmesh-webhook.mesh.svc.corp.internal" {
		t.Errorf("DNS scope %+v, webhook hosts %v", o.dns, o.webhookHosts)
	}
}

func TestParseFlagsErrors(t *testing.T) {
	for name, tc := range map[string]struct {
		args []string
		want string
	}{
		"trust domain with upper case": {[]string{"--trust-domain=Cluster.Local"}, `invalid value "Cluster.Local" for flag -trust-domain: trust domain characters are limited`},
		"trust domain as a SPIFFE ID":  {[]string{"--trust-domain=spiffe://cluster.local"}, `invalid value "spiffe://cluster.local" for flag -trust-domain: give the bare trust domain, e.g. "cluster.local"`},
		"empty trust domain":           {[]string{"--trust-domain="}, `invalid value "" for flag -trust-domain`},
		"CA secret without namespace":  {[]string{"--ca-secret=agentmesh-ca"}, `invalid value "agentmesh-ca" for flag -ca-secret: want namespace/name`},
		"CA secret bad namespace":      {[]string{"--ca-secret=Bad_NS/ca"}, `flag -ca-secret: namespace "Bad_NS"`},
		"CA secret bad name":           {[]string{"--ca-secret=ns/Bad_Name"}, `flag -ca-secret: name "Bad_Name"`},
		"emergency deadline too short": {[]string{"--ca-emergency-deadline=30s"}, "invalid value 30s for flag -ca-emergency-deadline: must be at least 1m"},
		"qps zero":                     {[]string{"--kube-api-qps=0"}, "invalid value 0 for flag -kube-api-qps: must be greater than 0"},
		"qps not a number":             {[]string{"--kube-api-qps=fast"}, `invalid value "fast" for flag -kube-api-qps`},
		"burst below qps":              {[]string{"--kube-api-qps=100", "--kube-api-burst=10"}, "invalid value 10 for flag -kube-api-burst: must be at least -kube-api-qps (100)"},
		"no concurrency":               {[]string{"--max-concurrent-reconciles=0"}, "invalid value 0 for flag -max-concurrent-reconciles"},
		"webhook port":                 {[]string{"--webhook-port=70000"}, "invalid value 70000 for flag -webhook-port"},
		"cluster domain":               {[]string{"--cluster-domain=Corp_Internal"}, `invalid value "Corp_Internal" for flag -cluster-domain`},
		"allowed DNS name":             {[]string{"--allowed-dns-names=ok.example,*.*.example"}, `invalid value "ok.example,*.*.example" for flag -allowed-dns-names: "*.*.example" is not a DNS name`},
		"webhook host":                 {[]string{"--webhook-cert-hosts=127.0.0.1,not_a_host"}, `"not_a_host" is neither a DNS name nor an IP`},
		"webhook CA secret":            {[]string{"--webhook-ca-secret=nope"}, `invalid value "nope" for flag -webhook-ca-secret`},
		"unknown flag":                 {[]string{"--trust-domian=x"}, "flag provided but not defined: -trust-domian (run with -h for the list of flags)"},
		"positional argument":          {[]string{"start"}, `unexpected argument "start"`},
		"default policy":               {[]string{"--default-policy=allow"}, `invalid value "allow" for flag -default-policy: want allow-authenticated or deny`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := parseFlags(tc.args, io.Discard)
			if err == nil {
				t.Fatalf("accepted %v", tc.args)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %q does not contain %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error is not one line: %q", err)
			}
		})
	}
}
