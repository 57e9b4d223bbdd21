// Package podrunner plays the kubelet on machines without a container
// runtime: it watches the Pods of a namespace on the local API server (as
// the admission webhooks left them), lays out their projected volumes the
// way the kubelet does (a timestamped directory behind an atomically
// swapped ..data symlink, through agenttlstest.AtomicWriter) and rewrites
// them whenever a Secret or ConfigMap they project changes, then starts
// each container's command as a local process with the Pod's environment,
// and marks the Pod Running.
//
// For a podCertificate projection it does what the kubelet does: it
// binds the Pod to its node, generates a key of the projection's type,
// sends a PodCertificateRequest with the Pod's, service account's and
// node's names and UIDs and a stub PKCS#10 request signed by the key, writes
// the key and the issued chain at the projection's paths, and starts over
// with a new key at the signer's beginRefreshAt.
//
// The one liberty it takes: a process cannot mount a volume at its mount
// path, so environment values and arguments that start with a mount path
// are rewritten to the directory that holds the volume.
package podrunner

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/agentmesh/agentmesh/pkg/agenttls/agenttlstest"
)

// Runner runs the Pods of one namespace as local processes.
type Runner struct {
	Client    kubernetes.Interface
	Namespace string
	// Dir holds a directory per Pod for its volumes and logs.
	Dir string
	// Images maps a container image to the local binary that stands for it.
	Images map[string]string

	mu      sync.Mutex
	pods    map[string]*pod // by UID
	secrets cache.Store
	cms     cache.Store
	node    *corev1.Node
}

type pod struct {
	uid     string
	name    string
	dir     string
	volumes []*volume
	procs   []*Process
	running bool
}

type volume struct {
	name    string
	writer  *agenttlstest.AtomicWriter
	sources []corev1.VolumeProjection
	written bool
	// creds holds, per podCertificate source, the key and certificate the
	// signer issued and the request under way.
	creds map[int]*credential
}

// Process is one container running as a local process.
type Process struct {
	Pod, Container string
	Cmd            *exec.Cmd
	// Log is the file that receives its stdout and stderr.
	Log  string
	done chan struct{}
}

// Done is closed when the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Run watches until ctx ends, then stops every process it started.
func (r *Runner) Run(ctx context.Context) error {
	r.pods = map[string]*pod{}
	node, err := r.Client.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{GenerateName: "podrunner-"}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("podrunner: registering the node: %w", err)
	}
	r.node = node
	f := informers.NewSharedInformerFactoryWithOptions(r.Client, 0, informers.WithNamespace(r.Namespace))
	podInf := f.Core().V1().Pods().Informer()
	secInf := f.Core().V1().Secrets().Informer()
	cmInf := f.Core().V1().ConfigMaps().Informer()
	r.secrets, r.cms = secInf.GetStore(), cmInf.GetStore()

	sync := func(any) { r.syncAll(ctx) }
	for _, inf := range []cache.SharedIndexInformer{podInf, secInf, cmInf} {
		if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    sync,
			UpdateFunc: func(_, o any) { sync(o) },
			DeleteFunc: sync,
		}); err != nil {
			return err
		}
	}
	f.Start(ctx.Done())
	f.WaitForCacheSync(ctx.Done())
	podStore := podInf.GetStore()
	ticker := time.NewTicker(time.Second)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			r.stopAll()
			f.Shutdown()
			return nil
		case <-ticker.C:
			r.reap(podStore)
			r.syncAll(ctx)
		}
	}
}

// Processes lists the processes started for a Pod.
func (r *Runner) Processes(podName string) []*Process {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []*Process
	for _, p := range r.pods {
		if p.name == podName {
			out = append(out, p.procs...)
		}
	}
	return out
}

// VolumeDir is where a Pod's volume is laid out.
func (r *Runner) VolumeDir(podName, volumeName string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, p := range r.pods {
		if p.name == podName {
			return filepath.Join(p.dir, "volumes", volumeName)
		}
	}
	return ""
}

// syncAll brings every Pod's volumes and processes up to date.
func (r *Runner) syncAll(ctx context.Context) {
	list, err := r.Client.CoreV1().Pods(r.Namespace).List(ctx, metav1.ListOptions{ResourceVersion: "0"})
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range list.Items {
		kp := &list.Items[i]
		if !kp.DeletionTimestamp.IsZero() {
			continue
		}
		if kp.Spec.NodeName == "" {
			// Play the scheduler too: bind the Pod to this node.
			_ = r.Client.CoreV1().Pods(r.Namespace).Bind(ctx, &corev1.Binding{
				ObjectMeta: metav1.ObjectMeta{Name: kp.Name, Namespace: kp.Namespace},
				Target:     corev1.ObjectReference{Kind: "Node", Name: r.node.Name},
			}, metav1.CreateOptions{})
			continue
		}
		if kp.Spec.NodeName != r.node.Name {
			continue
		}
		p, ok := r.pods[string(kp.UID)]
		if !ok {
			var err error
			if p, err = r.newPod(kp); err != nil {
				continue
			}
			r.pods[string(kp.UID)] = p
		}
		if !r.writeVolumes(ctx, p, kp) {
			continue // a Secret, ConfigMap or certificate is missing: wait, as the kubelet does
		}
		if !p.running {
			if err := r.start(ctx, p, kp); err != nil {
				fmt.Fprintf(os.Stderr, "podrunner: starting pod %s: %v\n", kp.Name, err)
				continue
			}
			p.running = true
			kp.Status.Phase = corev1.PodRunning
			_, _ = r.Client.CoreV1().Pods(r.Namespace).UpdateStatus(ctx, kp, metav1.UpdateOptions{})
		}
	}
}

func (r *Runner) newPod(kp *corev1.Pod) (*pod, error) {
	p := &pod{uid: string(kp.UID), name: kp.Name, dir: filepath.Join(r.Dir, kp.Name+"-"+string(kp.UID)[:8])}
	for _, v := range kp.Spec.Volumes {
		if v.Projected == nil {
			continue
		}
		w, err := agenttlstest.NewAtomicWriter(filepath.Join(p.dir, "volumes", v.Name))
		if err != nil {
			return nil, err
		}
		p.volumes = append(p.volumes, &volume{name: v.Name, writer: w, sources: v.Projected.Sources, creds: map[int]*credential{}})
	}
	return p, nil
}

// writeVolumes writes every projected volume from the current Secrets and
// ConfigMaps; the writer leaves a volume whose content did not change
// alone. It reports whether every source exists.
func (r *Runner) writeVolumes(ctx context.Context, p *pod, kp *corev1.Pod) bool {
	for _, v := range p.volumes {
		payload := map[string][]byte{}
		for i, src := range v.sources {
			var data map[string][]byte
			var items []corev1.KeyToPath
			switch {
			case src.PodCertificate != nil:
				c := v.creds[i]
				if c == nil {
					c = &credential{}
					v.creds[i] = c
				}
				if !r.podCertificate(ctx, kp, src.PodCertificate, c) {
					return false
				}
				if path := src.PodCertificate.CredentialBundlePath; path != "" {
					payload[path] = append(append([]byte{}, c.keyPEM...), c.chainPEM...)
				}
				if path := src.PodCertificate.KeyPath; path != "" {
					payload[path] = c.keyPEM
				}
				if path := src.PodCertificate.CertificateChainPath; path != "" {
					payload[path] = c.chainPEM
				}
				continue
			case src.Secret != nil:
				obj, ok, _ := r.secrets.GetByKey(r.Namespace + "/" + src.Secret.Name)
				if !ok {
					return false
				}
				data, items = obj.(*corev1.Secret).Data, src.Secret.Items
			case src.ConfigMap != nil:
				obj, ok, _ := r.cms.GetByKey(r.Namespace + "/" + src.ConfigMap.Name)
				if !ok {
					return false
				}
				data = map[string][]byte{}
				for k, s := range obj.(*corev1.ConfigMap).Data {
					data[k] = []byte(s)
				}
				items = src.ConfigMap.Items
			default:
				continue
			}
			for _, it := range items {
				b, ok := data[it.Key]
				if !ok {
					return false
				}
				payload[it.Path] = b
			}
		}
		if err := v.writer.Write(payload); err != nil {
			fmt.Fprintf(os.Stderr, "podrunner: writing volume %s of pod %s: %v\n", v.name, p.name, err)
			return false
		}
		v.written = true
	}
	return true
}

// start runs the init containers to completion, then the containers.
func (r *Runner) start(ctx context.Context, p *pod, kp *corev1.Pod) error {
	mounts := map[string]string{}
	for _, v := range p.volumes {
		mounts[v.name] = v.writer.Dir()
	}
	for _, c := range kp.Spec.InitContainers {
		proc, err := r.exec(p, c, mounts)
		if err != nil {
			return err
		}
		select {
		case <-proc.done:
		case <-ctx.Done():
			return ctx.Err()
		}
		if proc.Cmd.ProcessState == nil || !proc.Cmd.ProcessState.Success() {
			return fmt.Errorf("init container %s failed", c.Name)
		}
	}
	for _, c := range kp.Spec.Containers {
		if _, err := r.exec(p, c, mounts); err != nil {
			return err
		}
	}
	return nil
}

func (r *Runner) exec(p *pod, c corev1.Container, volumeDirs map[string]string) (*Process, error) {
	bin, ok := r.Images[c.Image]
	if !ok {
		return nil, fmt.Errorf("no local binary stands for image %q", c.Image)
	}
	// Mount paths, longest first, mapped to the volume directories.
	type mapping struct{ from, to string }
	var maps []mapping
	for _, m := range c.VolumeMounts {
		if dir, ok := volumeDirs[m.Name]; ok {
			maps = append(maps, mapping{strings.TrimSuffix(m.MountPath, "/"), dir})
		}
	}
	sort.Slice(maps, func(i, j int) bool { return len(maps[i].from) > len(maps[j].from) })
	rewrite := func(s string) string {
		for _, m := range maps {
			if s == m.from || strings.HasPrefix(s, m.from+"/") {
				return m.to + strings.TrimPrefix(s, m.from)
			}
		}
		return s
	}
	args := make([]string, 0, len(c.Command)+len(c.Args))
	for _, a := range append(append([]string{}, c.Command...), c.Args...) {
		args = append(args, rewrite(a))
	}
	if len(c.Command) > 0 {
		args = args[1:] // the command itself is the image's binary
	}
	env := []string{"PATH=" + os.Getenv("PATH"), "HOME=" + p.dir}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			return nil, fmt.Errorf("container %s: env %s uses valueFrom, which the pod runner does not support", c.Name, e.Name)
		}
		env = append(env, e.Name+"="+rewrite(e.Value))
	}
	logPath := filepath.Join(p.dir, c.Name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Dir = p.dir
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		_ = logFile.Close()
		return nil, err
	}
	proc := &Process{Pod: p.name, Container: c.Name, Cmd: cmd, Log: logPath, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		_ = logFile.Close()
		close(proc.done)
	}()
	p.procs = append(p.procs, proc)
	return proc, nil
}

// reap stops the processes of Pods that are gone.
func (r *Runner) reap(store cache.Store) {
	r.mu.Lock()
	defer r.mu.Unlock()
	live := map[string]bool{}
	for _, o := range store.List() {
		kp := o.(*corev1.Pod)
		if kp.DeletionTimestamp.IsZero() {
			live[string(kp.UID)] = true
		}
	}
	for uid, p := range r.pods {
		if !live[uid] {
			stop(p)
			delete(r.pods, uid)
		}
	}
}

func (r *Runner) stopAll() {
	r.mu.Lock()
	defer r.mu.Unlock()
	for uid, p := range r.pods {
		stop(p)
		delete(r.pods, uid)
	}
}

func stop(p *pod) {
	for _, proc := range p.procs {
		_ = proc.Cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, proc := range p.procs {
		select {
		case <-proc.done:
		case <-time.After(5 * time.Second):
			_ = proc.Cmd.Process.Kill()
			<-proc.done
		}
	}
}

// ReadLog returns what a container wrote.
func ReadLog(p *Process) string {
	f, err := os.Open(p.Log)
	if err != nil {
		return ""
	}
	defer func() { _ = f.Close() }()
	b, _ := io.ReadAll(f)
	return string(b)
}

// IsNotFound is apierrors.IsNotFound, for callers of this package.
var IsNotFound = apierrors.IsNotFound
