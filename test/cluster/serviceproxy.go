package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// nodeServiceCIDR is the first Service IP range tried for a cluster with
// nodes. It is loopback so that the Service proxy can listen on every
// ClusterIP; the kubernetes Service gets its first address.
const nodeServiceCIDR = "127.0.100.0/24"

// freeServiceCIDR picks the Service IP range of a cluster with nodes: the
// first of 127.0.100.0/24 ... 127.0.199.0/24 whose first address has port
// 443 free, so that a second cluster on the machine (make dev beside the
// tests) does not answer for this one's Services.
func freeServiceCIDR() (string, error) {
	for k := 100; k < 200; k++ {
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.%d.1:443", k))
		if err != nil {
			continue
		}
		_ = ln.Close()
		return fmt.Sprintf("127.0.%d.0/24", k), nil
	}
	return "", errors.New("cluster: no free loopback Service CIDR in 127.0.100.0/24 ... 127.0.199.0/24")
}

// serviceProxy does kube-proxy's job for a cluster with nodes, in user
// space: for each TCP port of a ClusterIP Service with a selector and a
// ClusterIP in the loopback Service CIDR, it listens on clusterIP:port
// while the Service has a ready Pod and copies each connection, as plain
// TCP, to one of them (round-robin, the next one when a dial fails). The
// API server calls a webhook at its Service's ClusterIP, so this is how it
// reaches one served by Pods. The backends come from the Pods themselves,
// not from Endpoints or EndpointSlices: the API server refuses loopback
// addresses there, and every Pod of these nodes has one (hostNetwork on
// 127.0.0.x), so the endpoint controllers can never record them.
// default/kubernetes forwards to the API server's own address.
type serviceProxy struct {
	cidr      *net.IPNet
	apiServer string // host:port, the backend of default/kubernetes
	out       io.Writer
	factory   informers.SharedInformerFactory
	services  corelisters.ServiceLister
	pods      corelisters.PodLister
	changed   chan struct{}
	ctx       context.Context // ends in close: informers, the sync loop, dials
	cancel    context.CancelFunc
	loopDone  chan struct{}
	wg        sync.WaitGroup // accept loops and forwarded connections

	mu        sync.Mutex
	stopped   bool
	listeners map[string]*serviceListener // by clusterIP:port
	conns     map[net.Conn]struct{}
	counts    map[types.NamespacedName]int
}

// serviceTarget is what a listener forwards: a port of a Service.
type serviceTarget struct {
	service types.NamespacedName
	port    int32
}

type serviceListener struct {
	serviceTarget
	ln   net.Listener
	next atomic.Uint64 // round-robin
}

// startServiceProxy starts the proxy of the Services in cidr and returns
// once its caches are synced; close stops it.
func startServiceProxy(cs kubernetes.Interface, cidr, apiServer string, out io.Writer) (*serviceProxy, error) {
	_, ipnet, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, err
	}
	if out == nil {
		out = io.Discard
	}
	factory := informers.NewSharedInformerFactory(cs, 0)
	ctx, cancel := context.WithCancel(context.Background())
	p := &serviceProxy{
		cidr: ipnet, apiServer: apiServer, out: out, factory: factory,
		services: factory.Core().V1().Services().Lister(), pods: factory.Core().V1().Pods().Lister(),
		changed: make(chan struct{}, 1), ctx: ctx, cancel: cancel, loopDone: make(chan struct{}),
		listeners: map[string]*serviceListener{}, conns: map[net.Conn]struct{}{}, counts: map[types.NamespacedName]int{},
	}
	poke := func() {
		select {
		case p.changed <- struct{}{}:
		default:
		}
	}
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke() }, UpdateFunc: func(any, any) { poke() }, DeleteFunc: func(any) { poke() },
	}
	for _, inf := range []cache.SharedIndexInformer{factory.Core().V1().Services().Informer(), factory.Core().V1().Pods().Informer()} {
		if _, err := inf.AddEventHandler(handler); err != nil {
			cancel()
			return nil, err
		}
	}
	factory.Start(ctx.Done())
	syncCtx, syncCancel := context.WithTimeout(ctx, time.Minute)
	defer syncCancel()
	if res := factory.WaitForCacheSyncWithContext(syncCtx); res.Err != nil {
		cancel()
		factory.Shutdown()
		return nil, fmt.Errorf("cluster: the Service proxy's caches: %w", res.Err)
	}
	go p.loop()
	return p, nil
}

// loop applies the Services and Pods to the listeners on every change, and
// again a second later when a listener could not be opened.
func (p *serviceProxy) loop() {
	defer close(p.loopDone)
	var retry <-chan time.Time
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-p.changed:
		case <-retry:
		}
		retry = nil
		if !p.sync() {
			retry = time.After(time.Second)
		}
	}
}

// sync opens a listener for every proxied Service port with a backend and
// closes the others. It reports false when a listener could not be opened.
func (p *serviceProxy) sync() bool {
	want := map[string]serviceTarget{}
	svcs, _ := p.services.List(labels.Everything())
	for _, svc := range svcs {
		for _, sp := range svc.Spec.Ports {
			if p.proxied(svc, sp) && len(p.backendsOf(svc, sp)) > 0 {
				addr := net.JoinHostPort(svc.Spec.ClusterIP, strconv.Itoa(int(sp.Port)))
				want[addr] = serviceTarget{types.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}, sp.Port}
			}
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return true
	}
	for addr, l := range p.listeners {
		if t, ok := want[addr]; !ok || t != l.serviceTarget {
			_ = l.ln.Close()
			delete(p.listeners, addr)
			fmt.Fprintf(p.out, "serviceproxy: closed %s (%s)\n", addr, l.service)
		}
	}
	ok := true
	for addr, t := range want {
		if _, open := p.listeners[addr]; open {
			continue
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			fmt.Fprintf(p.out, "serviceproxy: %s (%s): %v\n", addr, t.service, err)
			ok = false
			continue
		}
		l := &serviceListener{serviceTarget: t, ln: ln}
		p.listeners[addr] = l
		p.wg.Add(1)
		go p.accept(l)
		fmt.Fprintf(p.out, "serviceproxy: listening on %s for %s\n", addr, t.service)
	}
	return ok
}

// proxied tells whether a Service port is proxied: TCP, of a ClusterIP
// Service with a selector (or default/kubernetes) and a ClusterIP in the
// proxy's CIDR.
func (p *serviceProxy) proxied(svc *corev1.Service, sp corev1.ServicePort) bool {
	ip := net.ParseIP(svc.Spec.ClusterIP)
	return (svc.Spec.Type == corev1.ServiceTypeClusterIP || svc.Spec.Type == "") &&
		ip != nil && p.cidr.Contains(ip) &&
		(sp.Protocol == corev1.ProtocolTCP || sp.Protocol == "") &&
		(len(svc.Spec.Selector) > 0 || isKubernetesService(svc))
}

func isKubernetesService(svc *corev1.Service) bool {
	return svc.Namespace == metav1.NamespaceDefault && svc.Name == "kubernetes"
}

// backendsOf lists the current backends of a Service port.
func (p *serviceProxy) backendsOf(svc *corev1.Service, sp corev1.ServicePort) []string {
	if isKubernetesService(svc) {
		return []string{p.apiServer}
	}
	pods, _ := p.pods.Pods(svc.Namespace).List(labels.SelectorFromSet(svc.Spec.Selector))
	return backends(svc, sp, pods)
}

// backends lists the addresses a port of a Service forwards to, in the
// order of the Pods' names: podIP:targetPort of every Pod in the Service's
// namespace that its selector matches, that is Ready, not terminating, and
// has the port. A named targetPort is looked up among the Pod's container
// ports; a numeric one is used as is, and none means the Service's port.
func backends(svc *corev1.Service, sp corev1.ServicePort, pods []*corev1.Pod) []string {
	selector := labels.SelectorFromSet(svc.Spec.Selector)
	sorted := append([]*corev1.Pod(nil), pods...)
	sort.Slice(sorted, func(i, j int) bool { return sorted[i].Name < sorted[j].Name })
	var out []string
	for _, pod := range sorted {
		if pod.Namespace != svc.Namespace || len(svc.Spec.Selector) == 0 || !selector.Matches(labels.Set(pod.Labels)) ||
			pod.DeletionTimestamp != nil || pod.Status.PodIP == "" || !podReady(pod) {
			continue
		}
		if port := targetPort(pod, sp); port > 0 {
			out = append(out, net.JoinHostPort(pod.Status.PodIP, strconv.Itoa(int(port))))
		}
	}
	return out
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// targetPort is the Pod's port for a Service port, 0 if it has none.
func targetPort(pod *corev1.Pod, sp corev1.ServicePort) int32 {
	switch tp := sp.TargetPort; {
	case tp.Type == intstr.String && tp.StrVal != "":
		for _, c := range pod.Spec.Containers {
			for _, cp := range c.Ports {
				if cp.Name == tp.StrVal && (cp.Protocol == corev1.ProtocolTCP || cp.Protocol == "") {
					return cp.ContainerPort
				}
			}
		}
		return 0
	case tp.Type == intstr.Int && tp.IntVal != 0:
		return tp.IntVal
	default:
		return sp.Port
	}
}

// accept forwards the listener's connections until it is closed.
func (p *serviceProxy) accept(l *serviceListener) {
	defer p.wg.Done()
	for {
		c, err := l.ln.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil {
			fmt.Fprintf(p.out, "serviceproxy: accepting on %s: %v\n", l.ln.Addr(), err)
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if !p.track(c) {
			return
		}
		p.wg.Add(1)
		go p.forward(l, c)
	}
}

// track records a connection so that close closes it; it closes it and
// reports false once the proxy is stopped.
func (p *serviceProxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		_ = c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *serviceProxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	_ = c.Close()
}

// forward dials a backend for a client connection and copies both ways;
// each side's end of data is passed on as a half-close.
func (p *serviceProxy) forward(l *serviceListener, client net.Conn) {
	defer p.wg.Done()
	defer p.untrack(client)
	backend, err := p.dial(l)
	if err != nil {
		fmt.Fprintf(p.out, "serviceproxy: %s port %d: %v\n", l.service, l.port, err)
		return
	}
	if !p.track(backend) {
		return
	}
	defer p.untrack(backend)
	p.mu.Lock()
	p.counts[l.service]++
	p.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		pipe(backend, client)
	}()
	pipe(client, backend)
	<-done
}

// pipe copies src to dst, then closes dst for writing; on an error it
// closes both, which ends the copy the other way too.
func pipe(dst, src net.Conn) {
	if _, err := io.Copy(dst, src); err != nil {
		_ = dst.Close()
		_ = src.Close()
		return
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = dst.Close()
}

// dial connects to the listener's Service's backends, starting at the next
// one in turn and trying each until one answers.
func (p *serviceProxy) dial(l *serviceListener) (net.Conn, error) {
	svc, err := p.services.Services(l.service.Namespace).Get(l.service.Name)
	if err != nil {
		return nil, err
	}
	var addrs []string
	for _, sp := range svc.Spec.Ports {
		if sp.Port == l.port {
			addrs = p.backendsOf(svc, sp)
		}
	}
	if len(addrs) == 0 {
		return nil, errors.New("no ready Pod")
	}
	d := net.Dialer{Timeout: 2 * time.Second}
	var errs []error
	for _, addr := range rotate(addrs, l.next.Add(1)-1) {
		c, err := d.DialContext(p.ctx, "tcp", addr)
		if err == nil {
			return c, nil
		}
		errs = append(errs, err)
	}
	return nil, errors.Join(errs...)
}

// rotate returns addrs starting at index n modulo their number.
func rotate(addrs []string, n uint64) []string {
	i := int(n % uint64(len(addrs)))
	return append(append([]string(nil), addrs[i:]...), addrs[:i]...)
}

// connections is how many connections were forwarded to a backend of a
// Service.
func (p *serviceProxy) connections(svc types.NamespacedName) int {
	if p == nil {
		return 0
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts[svc]
}

// close closes every listener and connection, stops the informers, and
// returns once every goroutine of the proxy has ended.
func (p *serviceProxy) close() {
	if p == nil {
		return
	}
	p.mu.Lock()
	p.stopped = true
	for addr, l := range p.listeners {
		_ = l.ln.Close()
		delete(p.listeners, addr)
	}
	for c := range p.conns {
		_ = c.Close()
	}
	p.mu.Unlock()
	p.cancel()
	<-p.loopDone
	p.factory.Shutdown()
	p.wg.Wait()
}
