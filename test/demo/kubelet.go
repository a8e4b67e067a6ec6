package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/mount-utils"
)

// daemonProcess is a running kvdriver or nmi.
type daemonProcess struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	log     *os.File
	done    chan struct{}
	err     error // Wait's result, once done is closed
}

// startDaemon runs bin, named name in messages, with args and exactly env,
// its output going to logPath.
func startDaemon(name, bin string, args, env []string, logPath string) (*daemonProcess, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create %s's log: %w", name, err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Close()
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	p := &daemonProcess{name: name, cmd: cmd, logPath: logPath, log: log, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	return p, nil
}

// stop asks the daemon to stop as the kubelet's container runtime does
// (SIGTERM), and kills it after 10 seconds.
func (p *daemonProcess) stop() error {
	defer p.log.Close()
	select {
	case <-p.done:
		return fmt.Errorf("%s had exited: %v", p.name, p.err)
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s ignored SIGTERM for 10s and was killed", p.name)
	}
	if p.err != nil {
		return fmt.Errorf("%s: %w", p.name, p.err)
	}
	return nil
}

// logTail returns the last n lines of the daemon's log.
func (p *daemonProcess) logTail(n int) string {
	b, err := os.ReadFile(p.logPath)
	if err != nil {
		return err.Error() + "\n"
	}
	lines := strings.SplitAfter(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "") + "\n"
}

// dialCSI connects to kvdriver's CSI socket as kubelet does.
func dialCSI(sock string) (*grpc.ClientConn, csipb.IdentityClient, csipb.NodeClient, error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, nil, fmt.Errorf("connect to kvdriver: %w", err)
	}
	return conn, csipb.NewIdentityClient(conn), csipb.NewNodeClient(conn), nil
}

// waitReady probes kvdriver until it says it is ready (its
// SecretProviderClass informer has synced).
func waitReady(ctx context.Context, ident csipb.IdentityClient, p *daemonProcess) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		resp, err := ident.Probe(pctx, &csipb.ProbeRequest{})
		cancel()
		if err == nil && resp.GetReady().GetValue() {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("kvdriver exited before it was ready: %v", p.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kvdriver was not ready after 30s (last probe: %v)", err)
		}
	}
}

// mountsBelow lists the mount points below dir.
func mountsBelow(dir string) ([]string, error) {
	mounts, err := mount.New("").List()
	if err != nil {
		return nil, fmt.Errorf("list mounts: %w", err)
	}
	var out []string
	for _, m := range mounts {
		if strings.HasPrefix(m.Path, dir+string(filepath.Separator)) {
			out = append(out, m.Path)
		}
	}
	return out, nil
}
