package cluster

import (
	"context"
	"errors"
	"io"
	"net"
	"reflect"
	"strconv"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
)

func proxyTestPod(name, ip string, ready bool, ports ...corev1.ContainerPort) *corev1.Pod {
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: name, Labels: map[string]string{"app": "echo"}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Ports: ports}}},
		Status: corev1.PodStatus{PodIP: ip, Phase: corev1.PodRunning,
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}},
	}
}

func TestBackends(t *testing.T) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "echo"},
		Spec:       corev1.ServiceSpec{Selector: map[string]string{"app": "echo"}},
	}
	web := corev1.ContainerPort{Name: "web", ContainerPort: 9443}
	udp := corev1.ContainerPort{Name: "web", ContainerPort: 53, Protocol: corev1.ProtocolUDP}
	terminating := proxyTestPod("e-terminating", "127.0.0.5", true, web)
	terminating.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	otherNS := proxyTestPod("e-other-ns", "127.0.0.6", true, web)
	otherNS.Namespace = "elsewhere"
	otherApp := proxyTestPod("e-other-app", "127.0.0.7", true, web)
	otherApp.Labels = map[string]string{"app": "other"}
	pods := []*corev1.Pod{
		proxyTestPod("e-b", "127.0.0.2", true, web),
		proxyTestPod("e-a", "127.0.0.1", true, web),
		proxyTestPod("e-unready", "127.0.0.3", false, web),
		proxyTestPod("e-no-ip", "", true, web),
		proxyTestPod("e-no-port", "127.0.0.4", true),
		proxyTestPod("e-udp-port", "127.0.0.8", true, udp),
		terminating, otherNS, otherApp,
	}
	for _, tc := range []struct {
		name string
		port corev1.ServicePort
		want []string
	}{
		{"named targetPort: the container port of that name",
			corev1.ServicePort{Port: 443, TargetPort: intstr.FromString("web")}, []string{"127.0.0.1:9443", "127.0.0.2:9443"}},
		{"numeric targetPort: as is",
			corev1.ServicePort{Port: 443, TargetPort: intstr.FromInt32(8443)},
			[]string{"127.0.0.1:8443", "127.0.0.2:8443", "127.0.0.4:8443", "127.0.0.8:8443"}},
		{"no targetPort: the Service's port",
			corev1.ServicePort{Port: 443}, []string{"127.0.0.1:443", "127.0.0.2:443", "127.0.0.4:443", "127.0.0.8:443"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := backends(svc, tc.port, pods); !reflect.DeepEqual(got, tc.want) {
				t.Errorf("backends: %v, want %v", got, tc.want)
			}
		})
	}
	noSelector := svc.DeepCopy()
	noSelector.Spec.Selector = nil
	if got := backends(noSelector, corev1.ServicePort{Port: 443}, pods); len(got) != 0 {
		t.Errorf("a Service without a selector has backends %v", got)
	}
	addrs := []string{"a", "b", "c"}
	for n, want := range [][]string{{"a", "b", "c"}, {"b", "c", "a"}, {"c", "a", "b"}, {"a", "b", "c"}} {
		if got := rotate(addrs, uint64(n)); !reflect.DeepEqual(got, want) {
			t.Errorf("rotate(%v, %d) = %v, want %v", addrs, n, got, want)
		}
	}
}

func TestServiceProxyProxied(t *testing.T) {
	p := &serviceProxy{}
	_, p.cidr, _ = net.ParseCIDR(nodeServiceCIDR)
	sel := map[string]string{"app": "echo"}
	tcp := corev1.ServicePort{Port: 443}
	for _, tc := range []struct {
		name string
		svc  corev1.Service
		port corev1.ServicePort
		want bool
	}{
		{"ClusterIP in the CIDR with a selector", corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "127.0.100.7", Selector: sel}}, tcp, true},
		{"outside the CIDR", corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "10.0.0.7", Selector: sel}}, tcp, false},
		{"headless", corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: corev1.ClusterIPNone, Selector: sel}}, tcp, false},
		{"no selector", corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "127.0.100.7"}}, tcp, false},
		{"NodePort", corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeNodePort, ClusterIP: "127.0.100.7", Selector: sel}}, tcp, false},
		{"UDP", corev1.Service{Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "127.0.100.7", Selector: sel}},
			corev1.ServicePort{Port: 53, Protocol: corev1.ProtocolUDP}, false},
		{"default/kubernetes", corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kubernetes"},
			Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: "127.0.100.1"}}, tcp, true},
	} {
		if got := p.proxied(&tc.svc, tc.port); got != tc.want {
			t.Errorf("%s: proxied %v, want %v", tc.name, got, tc.want)
		}
	}
}

// echoServer echoes each connection until the client's half-close, then
// closes it; it runs until the test ends.
func echoServer(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() {
		_ = ln.Close()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { _ = c.Close() }()
				_ = c.SetDeadline(time.Now().Add(10 * time.Second))
				_, _ = io.Copy(c, c)
			}()
		}
	}()
	return ln.Addr().(*net.TCPAddr).Port
}

// roundTrip sends msg through addr, half-closes, and reads the echo to
// the end: the half-close must pass through the proxy both ways.
func roundTrip(addr, msg string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer func() { _ = c.Close() }()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if err := c.(*net.TCPConn).CloseWrite(); err != nil {
		return "", err
	}
	b, err := io.ReadAll(c)
	return string(b), err
}

func refused(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return nil
	}
	_ = c.Close()
	return errors.New(addr + " still accepts connections")
}

// TestServiceProxy runs the proxy against a fake API (no root: a high
// port on a loopback ClusterIP): a Service with a named targetPort and two
// ready Pods, one of which refuses connections, forwards every connection
// to the other; the listener closes while no Pod is ready, reopens when
// one is, closes when the Service goes, and close leaves none.
func TestServiceProxy(t *testing.T) {
	echo := echoServer(t)
	closedPort, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	port, err := FreePort()
	if err != nil {
		t.Fatal(err)
	}
	const clusterIP = "127.0.100.9"
	addr := net.JoinHostPort(clusterIP, strconv.Itoa(port))
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "apps", Name: "echo"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, ClusterIP: clusterIP, Selector: map[string]string{"app": "echo"},
			Ports: []corev1.ServicePort{{Name: "echo", Port: int32(port), TargetPort: intstr.FromString("echo"), Protocol: corev1.ProtocolTCP}}},
	}
	good := proxyTestPod("echo-good", "127.0.0.1", true, corev1.ContainerPort{Name: "echo", ContainerPort: int32(echo)})
	bad := proxyTestPod("echo-bad", "127.0.0.1", true, corev1.ContainerPort{Name: "echo", ContainerPort: int32(closedPort)})
	cs := fake.NewClientset(svc, good, bad)
	p, err := startServiceProxy(cs, nodeServiceCIDR, "127.0.0.1:1", nil)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			p.close()
		}
	})
	ctx := context.Background()
	if err := Poll(ctx, 10*time.Second, "the proxy listens on "+addr, func() error {
		_, err := roundTrip(addr, "hello")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	before := p.connections(types.NamespacedName{Namespace: "apps", Name: "echo"})
	for i := range 4 {
		msg := "message " + strconv.Itoa(i)
		if got, err := roundTrip(addr, msg); err != nil || got != msg {
			t.Errorf("round trip %d: %q, %v", i, got, err)
		}
	}
	if n := p.connections(types.NamespacedName{Namespace: "apps", Name: "echo"}) - before; n != 4 {
		t.Errorf("%d connections counted, want 4", n)
	}

	// A fake clientset may miss an event sent while its informer starts
	// watching: repeat each change until it shows.
	setReady := func(pod *corev1.Pod, ready bool) {
		p := pod.DeepCopy()
		p.Status.Conditions[0].Status = corev1.ConditionFalse
		if ready {
			p.Status.Conditions[0].Status = corev1.ConditionTrue
		}
		_, _ = cs.CoreV1().Pods("apps").UpdateStatus(ctx, p, metav1.UpdateOptions{})
	}
	if err := Poll(ctx, 10*time.Second, "no ready Pod: the listener closes", func() error {
		setReady(good, false)
		setReady(bad, false)
		return refused(addr)
	}); err != nil {
		t.Fatal(err)
	}
	if err := Poll(ctx, 10*time.Second, "a ready Pod again: the listener reopens", func() error {
		setReady(good, true)
		_, err := roundTrip(addr, "back")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if err := Poll(ctx, 10*time.Second, "the Service deleted: the listener closes", func() error {
		_ = cs.CoreV1().Services("apps").Delete(ctx, "echo", metav1.DeleteOptions{})
		return refused(addr)
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().Services("apps").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := Poll(ctx, 10*time.Second, "the Service back: the listener reopens", func() error {
		_, err := roundTrip(addr, "again")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	// A connection in flight when the proxy closes is closed too.
	inFlight, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = inFlight.Close() }()
	if _, err := io.WriteString(inFlight, "x"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 1)
	_ = inFlight.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(inFlight, buf); err != nil {
		t.Fatal(err)
	}
	p.close()
	closed = true
	if err := refused(addr); err != nil {
		t.Error(err)
	}
	if _, err := inFlight.Read(buf); !errors.Is(err, io.EOF) {
		t.Errorf("a connection in flight after close: read %v, want EOF", err)
	}
}
