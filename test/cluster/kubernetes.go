package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/pinned"
)

// startKubernetes starts the control plane on the service address, then
// the controllers and kubelet, and waits for the node to be Ready.
func (n *Node) startKubernetes(ctx context.Context) error {
	bins, err := pinned.NodeBins.Path()
	if err != nil {
		return err
	}
	cp, err := controlplane.New(controlplane.Options{
		SecureAddress:           ServiceIP,
		SecurePort:              443,
		ServiceAccountAdmission: true,
		APIServerArgs: map[string][]string{
			// kube-apiserver reaches kubelet (logs) at the node's address.
			"kubelet-preferred-address-types": {"InternalIP"},
		},
	})
	if err != nil {
		return err
	}
	n.ControlPlane = cp
	n.CAFile = filepath.Join(n.Dir, "ca.crt")
	if err := os.WriteFile(n.CAFile, cp.Config.CAData, 0o644); err != nil {
		return err
	}
	if n.Kubeconfig, err = cp.WriteKubeconfig(n.Dir, nil); err != nil {
		return err
	}
	kubeletConfig := filepath.Join(n.Dir, "kubelet.yaml")
	if err := os.WriteFile(kubeletConfig, []byte(n.kubeletConfiguration()), 0o644); err != nil {
		return err
	}

	// The controllers and kubelet authenticate as the cluster's admin: a
	// test node has no bootstrap tokens or node certificates.
	for _, p := range []*process{
		{name: "kubelet", path: filepath.Join(bins, "kubelet"), args: []string{
			"--config=" + kubeletConfig, "--kubeconfig=" + n.Kubeconfig,
			"--hostname-override=" + NodeName, "--node-ip=" + NodeIP, "--v=2",
		}},
		{name: "kube-controller-manager", path: filepath.Join(bins, "kube-controller-manager"), args: []string{
			"--kubeconfig=" + n.Kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1",
			"--use-service-account-credentials=false",
			// The CA pods get in kube-root-ca.crt, beside their token.
			"--root-ca-file=" + n.CAFile,
			"--service-account-private-key-file=" + filepath.Join(cp.CertDir(), "sa-signer.key"),
			// Its self-signed serving certificate, by default in
			// /var/run/kubernetes.
			"--cert-dir=" + filepath.Join(n.Dir, "kube-controller-manager"),
			// It creates the FlexVolume directory it watches, by default
			// under /usr/libexec/kubernetes.
			"--flex-volume-plugin-dir=" + filepath.Join(n.Dir, "volume-plugins"),
			"--v=1",
		}},
		{name: "kube-scheduler", path: filepath.Join(bins, "kube-scheduler"), args: []string{
			"--kubeconfig=" + n.Kubeconfig, "--leader-elect=false", "--bind-address=127.0.0.1",
			"--cert-dir=" + filepath.Join(n.Dir, "kube-scheduler"), "--v=1",
		}},
	} {
		if err := p.start(n.Dir); err != nil {
			return err
		}
		n.procs = append(n.procs, p)
	}
	return n.waitReady(ctx)
}

// kubeletConfiguration is what a node on a test machine needs: cgroupfs
// (this kind of machine may have cgroup v1), no QoS cgroups or node
// allocatable enforcement, no swap check, eviction only when nearly full,
// kubelet's API on the node's address without authentication (only the
// node's own namespace reaches it), and a pod sync every 10 s instead of
// every minute, so that kubelet republishes volumes (rotation) sooner.
func (n *Node) kubeletConfiguration() string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupsPerQOS: false
enforceNodeAllocatable: []
failSwapOn: false
address: %s
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization:
  mode: AlwaysAllow
containerRuntimeEndpoint: unix://%s
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
syncFrequency: 10s
serializeImagePulls: false
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
volumePluginDir: %s
`, NodeIP, n.Containerd.Socket, filepath.Join(n.Dir, "volume-plugins"))
}

// waitReady waits for the node to register and report Ready.
func (n *Node) waitReady(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	var last string
	for {
		node, err := n.ControlPlane.Client.CoreV1().Nodes().Get(ctx, NodeName, metav1.GetOptions{})
		if err == nil {
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					last = c.Reason + ": " + c.Message
				}
			}
		} else {
			last = err.Error()
		}
		for _, p := range n.procs {
			if p.exited() {
				return fmt.Errorf("%s exited; its log ends:\n%s", p.name, tail(p.logPath, 40))
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s not Ready in 90s (%s); kubelet's log ends:\n%s", NodeName, last, tail(n.procs[0].logPath, 40))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// process is one of the node's daemons, logging to a file in the node's
// directory, in a process group of its own.
type process struct {
	name, path string
	args       []string
	logPath    string
	cmd        *exec.Cmd
	done       chan struct{}
	err        error
}

func (p *process) start(dir string) error {
	p.logPath = filepath.Join(dir, p.name+".log")
	log, err := os.Create(p.logPath)
	if err != nil {
		return err
	}
	defer log.Close()
	p.cmd = exec.Command(p.path, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = log, log
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.done = make(chan struct{})
	go func() { p.err = p.cmd.Wait(); close(p.done) }()
	return nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM to the process's group, then SIGKILL after 10 s.
func (p *process) stop() error {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	pgid := p.cmd.Process.Pid
	_ = syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		<-p.done
	}
	_ = syscall.Kill(-pgid, syscall.SIGKILL) // anything it left in its group
	var ee *exec.ExitError
	if p.err != nil && !errors.As(p.err, &ee) {
		return fmt.Errorf("stop %s: %w", p.name, p.err)
	}
	return nil
}

// logTails logs the end of each daemon's log, for a failed test.
func (n *Node) logTails(t testing.TB) {
	for _, p := range n.procs {
		t.Logf("%s's log ends:\n%s", p.name, tail(p.logPath, 30))
	}
	if n.Containerd != nil {
		t.Logf("containerd's log ends:\n%s", tailString(n.Containerd.Log(), 30))
	}
}

func tail(path string, lines int) string {
	b, _ := os.ReadFile(path)
	return tailString(string(b), lines)
}

func tailString(s string, lines int) string {
	all := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}
