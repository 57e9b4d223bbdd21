package cluster

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// Manager is the agentmesh manager binary running as a child process.
type Manager struct {
	cmd *exec.Cmd
	// ProbeAddr, MetricsAddr and WebhookPort are the loopback endpoints the
	// process serves.
	ProbeAddr   string
	MetricsAddr string
	WebhookPort int
	done        chan struct{}
	waitErr     error
}

// ManagerOptions configure StartManager.
type ManagerOptions struct {
	// Binary is the manager binary, usually <root>/bin/manager.
	Binary string
	// Kubeconfig is the kubeconfig the manager uses.
	Kubeconfig string
	// Args are extra flags, appended after the loopback endpoint flags.
	Args []string
	// Output receives the manager's stdout and stderr; nil discards them.
	Output io.Writer
	// WebhookPort is the port of the webhook server; 0 picks a free one.
	WebhookPort int
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on now.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// StartManager starts the manager with every endpoint on loopback (metrics
// over plain HTTP) and returns at once; use WaitReady to wait for /readyz.
// The process is killed if this process dies.
func StartManager(opts ManagerOptions) (*Manager, error) {
	ports := make([]int, 2)
	for i := range ports {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		ports[i] = p
	}
	m := &Manager{
		ProbeAddr:   "127.0.0.1:" + strconv.Itoa(ports[0]),
		MetricsAddr: "127.0.0.1:" + strconv.Itoa(ports[1]),
		WebhookPort: opts.WebhookPort,
		done:        make(chan struct{}),
	}
	if m.WebhookPort == 0 {
		p, err := FreePort()
		if err != nil {
			return nil, err
		}
		m.WebhookPort = p
	}
	args := make([]string, 0, 8+len(opts.Args))
	args = append(args,
		"--kubeconfig="+opts.Kubeconfig,
		"--health-probe-bind-address="+m.ProbeAddr,
		"--metrics-bind-address="+m.MetricsAddr,
		"--metrics-secure=false",
		"--webhook-host=127.0.0.1",
		"--webhook-port="+strconv.Itoa(m.WebhookPort),
		"--webhook-cert-hosts=127.0.0.1,localhost",
	)
	args = append(args, opts.Args...)
	m.cmd = exec.Command(opts.Binary, args...)
	out := opts.Output
	if out == nil {
		out = io.Discard
	}
	m.cmd.Stdout, m.cmd.Stderr = out, out
	// Never leave the manager behind if the parent dies, and keep it out of
	// the terminal's process group: the parent decides when it stops (Ctrl-C
	// reaches the parent only).
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := m.cmd.Start(); err != nil {
		return nil, fmt.Errorf("cluster: starting %s: %w", opts.Binary, err)
	}
	go func() {
		m.waitErr = m.cmd.Wait()
		close(m.done)
	}()
	return m, nil
}

// Pid is the manager's process id.
func (m *Manager) Pid() int { return m.cmd.Process.Pid }

// Exited is closed when the process has exited.
func (m *Manager) Exited() <-chan struct{} { return m.done }

// WaitReady polls /readyz until it answers 200, the process exits, or ctx ends.
func (m *Manager) WaitReady(ctx context.Context) error {
	url := "http://" + m.ProbeAddr + "/readyz"
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(url)
		if err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-m.done:
			return fmt.Errorf("cluster: manager exited before it was ready: %w", m.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("cluster: manager not ready at %s: %w", url, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Stop sends SIGTERM, waits up to grace for a clean exit, then kills the
// process. It returns the process's exit error, if any, for a clean exit;
// an exit by that SIGTERM (before the manager handles signals) is a clean
// stop, while a process that had already died, of a signal or not, is
// reported.
func (m *Manager) Stop(grace time.Duration) error {
	select {
	case <-m.done:
		return m.waitErr
	default:
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-m.done:
		var ee *exec.ExitError
		if errors.As(m.waitErr, &ee) {
			if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() && ws.Signal() == syscall.SIGTERM {
				return nil
			}
		}
		return m.waitErr
	case <-time.After(grace):
		_ = m.cmd.Process.Kill()
		<-m.done
		return errors.New("cluster: manager did not stop within the grace period and was killed")
	}
}
