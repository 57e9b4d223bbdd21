package agenttls_test

import (
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/agentmesh/agentmesh/pkg/agenttls"
)

// startHTTPS serves src's NewServer on 127.0.0.1 and returns its URL.
func startHTTPS(t *testing.T, src *agenttls.Source, h http.Handler) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := src.NewServer(ln.Addr().String(), h)
	srv.ErrorLog = log.New(io.Discard, "", 0)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.ServeTLS(ln, "", "")
	}()
	t.Cleanup(func() {
		_ = srv.Close()
		<-done
	})
	return "https://" + ln.Addr().String()
}

func TestHTTPServerAndClient(t *testing.T) {
	ca := newCA(t, tdLocal)
	workerSrc := newIdentity(t, ca, workerID, ingressOnly(workerID, "worker-ingress", agenttls.ModeEnforce, plannerID), nil).source(t)
	url := startHTTPS(t, workerSrc, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id, err := agenttls.PeerID(r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusUnauthorized)
			return
		}
		fmt.Fprintf(w, "hello %s over %s", id, r.Proto)
	}))

	planner := newIdentity(t, ca, plannerID, nil, nil).source(t)
	client := planner.NewHTTPClient()
	defer client.CloseIdleConnections()
	resp, err := client.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	body, err := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatal(err)
	}
	if want := "hello " + plannerID.String() + " over HTTP/2.0"; string(body) != want {
		t.Errorf("body %q, want %q", body, want)
	}
	if id, err := agenttls.PeerIDFromConnectionState(*resp.TLS); err != nil || id != workerID {
		t.Errorf("the client saw server %v, %v", id, err)
	}

	// Egress refused by the client's required server ID.
	strict := planner.NewHTTPClient(agenttls.WithServerID(outsiderID))
	defer strict.CloseIdleConnections()
	resp, err = strict.Get(url)
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("the client reached a server that is not the required one")
	}
	mustContain(t, err.Error(), "not the required "+outsiderID.String())

	// Ingress refusal: the outsider's request fails.
	outsider := newIdentity(t, ca, outsiderID, nil, nil).source(t)
	oc := outsider.NewHTTPClient()
	defer oc.CloseIdleConnections()
	resp, err = oc.Get(url)
	if err == nil {
		_ = resp.Body.Close()
		t.Fatal("the outsider got a response")
	}
}

func TestPeerIDWithoutTLS(t *testing.T) {
	r := httptest.NewRequest(http.MethodGet, "/", nil)
	if _, err := agenttls.PeerID(r); err == nil {
		t.Error("PeerID of a plain request succeeded")
	}
}
