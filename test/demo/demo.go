package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/go-logr/logr"
	"golang.org/x/sync/errgroup"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/klog/v2"
	ctrllog "sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/kvnode/kvnode/pkg/spc"
	"github.com/kvnode/kvnode/test/controlplane"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/kubelet"
	"github.com/kvnode/kvnode/test/netns"
	"github.com/kvnode/kvnode/test/pinned"
)

const (
	// cacheTTL is kvdriver's --object-cache-ttl and --rotation-poll-interval:
	// long enough that the second pod, published right after the first, is
	// served from the cache; short enough that the rotation shows after a
	// short wait.
	cacheTTL = 2 * time.Second
	// namespace, pods and volume of the demo's workload.
	namespace      = "demo"
	serviceAccount = "web"
	volumeName     = "secrets-store-inline"
	// spSecretName is the pods' nodePublishSecretRef. No such Secret is
	// stored: the demo is kubelet and passes its values itself.
	spSecretName = "kvnode-demo-sp"
	// rotatedValue is the db-password version the demo adds.
	rotatedValue = "rotated-again-horse-battery-staple"
	// nodeName is the node kvdriver serves.
	nodeName = "demo-node"
)

// Files the demo reads, relative to the repository.
const (
	emulatorSeedFile = "examples/emulator-demo.yaml"
	classFile        = "examples/secretproviderclass-demo.yaml"
	crdDir           = "charts/kvnode/crds"
	chartDir         = "charts/kvnode"
)

// demo is one run inside the private network namespace.
type demo struct {
	out   io.Writer
	start time.Time
	root  string // the repository
	dir   string // the demo's temporary directory, removed by the outer process
	bin   string // kvdriver
	helm  string
	// nmiBin and sdkClient are nmi and the Azure SDK client the pods run.
	nmiBin, sdkClient string

	seed   emulator.Config
	app    emulator.ApplicationConfig
	emu    *emulator.Emulator
	cp     *controlplane.ControlPlane
	dyn    dynamic.Interface
	driver *daemonProcess
	csi    csipb.NodeClient
	ident  csipb.IdentityClient
	ids    map[string]*chartIdentity // by component
	class  *classInfo

	// nmi's half.
	nmi      *daemonProcess
	nmiHost  string // its node-only listener, which kvdriver calls
	mi       emulator.ManagedIdentityConfig
	podClass *classInfo
	podNets  []*podNet

	// cleanups run last to first when the demo ends.
	cleanups []cleanup
}

type cleanup struct {
	what string
	fn   func() error
}

// runInside is the demo proper, in the private network namespace.
func runInside() error {
	ignoreBrokenPipe()
	if err := netns.LoopbackUp(); err != nil {
		return fmt.Errorf("bring up loopback in the private network namespace: %w", err)
	}
	// The narrative is the output: client-go, envtest and controller-runtime
	// log nothing.
	klog.SetLogger(logr.Discard())
	ctrllog.SetLogger(logr.Discard())
	root, err := repoRoot()
	if err != nil {
		return err
	}
	start, err := time.Parse(time.RFC3339Nano, os.Getenv(envStart))
	if err != nil {
		start = time.Now()
	}
	d := &demo{out: os.Stdout, start: start, root: root,
		dir: os.Getenv(envDir), bin: os.Getenv(envKVDriver), helm: os.Getenv(pinned.Helm.Env),
		nmiBin: os.Getenv(envNMI), sdkClient: os.Getenv(envSDKClient)}
	if d.dir == "" || d.bin == "" || d.nmiBin == "" || d.sdkClient == "" {
		return fmt.Errorf("%s, %s, %s and %s are not set; run the demo with go run ./test/demo", envDir, envKVDriver, envNMI, envSDKClient)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	err = d.run(ctx)
	if err != nil && ctx.Err() == nil {
		for _, p := range []*daemonProcess{d.driver, d.nmi} {
			if p != nil {
				fmt.Fprintf(os.Stderr, "\nlast lines of the %s log (%s):\n%s", p.name, p.logPath, p.logTail(20))
			}
		}
	}
	if cerr := d.shutdown(); cerr != nil {
		err = errors.Join(err, cerr)
	}
	if err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("interrupted: %w", err)
		}
		fmt.Fprintf(os.Stderr, "\nkvnode demo FAILED: %v\n", err)
		return exitStatus(1)
	}
	return nil
}

// step prints a line that starts a step, with the time since the start.
func (d *demo) step(format string, args ...any) {
	fmt.Fprintf(d.out, "[%5.1fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

// detail prints an indented line under a step.
func (d *demo) detail(format string, args ...any) {
	fmt.Fprintf(d.out, "          %s\n", fmt.Sprintf(format, args...))
}

func (d *demo) onShutdown(what string, fn func() error) {
	d.cleanups = append(d.cleanups, cleanup{what, fn})
}

// shutdown stops everything the demo started, last first, and checks that
// no mount is left below the demo's directory.
func (d *demo) shutdown() error {
	var errs, stopped []string
	for i := len(d.cleanups) - 1; i >= 0; i-- {
		c := d.cleanups[i]
		if err := c.fn(); err != nil {
			errs = append(errs, fmt.Sprintf("stop %s: %v", c.what, err))
			continue
		}
		if c.what != "" {
			stopped = append(stopped, c.what)
		}
	}
	d.cleanups = nil
	left, err := mountsBelow(d.dir)
	if err != nil {
		errs = append(errs, err.Error())
	} else if len(left) > 0 {
		errs = append(errs, fmt.Sprintf("mounts left behind: %s", strings.Join(left, ", ")))
	}
	if len(stopped) > 0 {
		d.step("stopped %s; no mounts left", strings.Join(stopped, ", "))
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}

func (d *demo) run(ctx context.Context) error {
	ifs, err := net.Interfaces()
	if err != nil {
		return fmt.Errorf("list network interfaces: %w", err)
	}
	var names []string
	for _, i := range ifs {
		names = append(names, i.Name)
	}
	d.step("private network namespace, interfaces: %s (nothing can leave this machine)", strings.Join(names, ", "))

	if err := d.startBackends(ctx); err != nil {
		return err
	}
	if err := d.startDaemons(ctx); err != nil {
		return err
	}
	// Stored while kvdriver and nmi start: the API server's first write of
	// a custom resource takes a moment.
	pods, err := d.createWorkload(ctx)
	if err != nil {
		return err
	}
	if err := d.createIdentityWorkload(ctx); err != nil {
		return err
	}
	if err := d.driverReady(ctx); err != nil {
		return err
	}
	if err := d.firstMount(ctx, pods[0]); err != nil {
		return err
	}
	if err := d.cachedMount(ctx, pods[1]); err != nil {
		return err
	}
	if err := d.rotate(ctx, pods[0]); err != nil {
		return err
	}
	if err := d.unpublish(ctx, pods); err != nil {
		return err
	}
	return d.identityStory(ctx)
}

// startBackends starts the Azure emulator and the control plane side by side.
func (d *demo) startBackends(ctx context.Context) error {
	seed, err := emulator.LoadConfig(filepath.Join(d.root, emulatorSeedFile))
	if err != nil {
		return err
	}
	if len(seed.Applications) == 0 || seed.Applications[0].Secret == "" {
		return fmt.Errorf("%s: the demo needs an application with a client secret", emulatorSeedFile)
	}
	if len(seed.ManagedIdentities) == 0 {
		return fmt.Errorf("%s: the demo needs a managed identity", emulatorSeedFile)
	}
	d.seed, d.app, d.mi = seed, seed.Applications[0], seed.ManagedIdentities[0]

	var (
		g          errgroup.Group
		emu        *emulator.Emulator
		cp         *controlplane.ControlPlane
		historyErr error
		added      int
	)
	g.Go(func() error {
		dir := filepath.Join(d.dir, "emulator")
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("emulator directory: %w", err)
		}
		var err error
		if emu, err = emulator.Start(emulator.Options{Dir: dir}); err != nil {
			return err
		}
		if err := emu.ApplyConfig(seed); err != nil {
			return fmt.Errorf("seed the emulator from %s: %w", emulatorSeedFile, err)
		}
		added, historyErr = addHistory(ctx, emu, seed)
		return nil
	})
	g.Go(func() error {
		var err error
		cp, err = controlplane.New(controlplane.Options{CRDDirectoryPaths: []string{filepath.Join(d.root, crdDir)}})
		return err
	})
	err = g.Wait()
	if emu != nil {
		d.emu = emu
		d.onShutdown("Azure emulator", emu.Close)
	}
	if cp != nil {
		d.cp = cp
		d.onShutdown("kube-apiserver and etcd", cp.Stop)
	}
	if err == nil {
		err = historyErr
	}
	if err != nil {
		return err
	}
	for _, v := range seed.Vaults {
		d.step("Azure emulator (Entra ID, Key Vault, IMDS) on %s from %s", emu.Addr(), emulatorSeedFile)
		d.detail("vault %s: %d secret versions, %d keys, %d certificates; service principal %s",
			v.Name, len(v.Secrets)+added, len(v.Keys), len(v.Certificates), d.app.ClientID)
	}
	if d.dyn, err = dynamic.NewForConfig(cp.Config); err != nil {
		return fmt.Errorf("dynamic client: %w", err)
	}
	d.step("control plane: etcd and kube-apiserver at %s, RBAC on, CRDs from %s", cp.Config.Host, crdDir)
	return nil
}

// addHistory adds versions of feature-flags to the one the seed has and
// returns how many. Key Vault dates versions to the second, so they are added
// a second apart: the order of a version history is then well defined.
func addHistory(ctx context.Context, emu *emulator.Emulator, seed emulator.Config) (int, error) {
	values := []string{"checkout=on", "checkout=on,search=beta"}
	if len(seed.Vaults) == 0 {
		return 0, fmt.Errorf("%s has no vault", emulatorSeedFile)
	}
	for _, v := range values {
		select {
		case <-time.After(1100 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		if _, err := emu.SetSecret(seed.Vaults[0].Name, "feature-flags", v, emulator.SecretOptions{}); err != nil {
			return 0, fmt.Errorf("add a version of feature-flags: %w", err)
		}
	}
	return len(values), nil
}

// startDaemons installs the chart's RBAC and starts kvdriver and nmi, each
// as its chart ServiceAccount, with the emulator's environment.
func (d *demo) startDaemons(ctx context.Context) error {
	ids, err := installChartRBAC(ctx, d.cp, d.helm, filepath.Join(d.root, chartDir), d.dir)
	if err != nil {
		return err
	}
	d.ids = ids
	if d.nmiHost, err = freeLoopbackAddr(); err != nil {
		return err
	}
	if err := d.startDriver(); err != nil {
		return err
	}
	return d.startNMI()
}

// startDriver starts kvdriver and connects to its CSI socket.
func (d *demo) startDriver() error {
	kubeconfig, err := d.cp.WriteKubeconfig(filepath.Join(d.dir, "kvdriver"), d.ids[kvdriverComponent].config)
	if err != nil {
		return fmt.Errorf("write kvdriver's kubeconfig: %w", err)
	}
	sock := filepath.Join(d.dir, "csi.sock")
	args := []string{"--endpoint", "unix://" + sock, "--nodeid", nodeName, "--kubeconfig", kubeconfig,
		"--object-cache-ttl", cacheTTL.String(), "--rotation-poll-interval", cacheTTL.String(),
		"--nmi-endpoint", "http://" + d.nmiHost, "--metrics-addr", "", "-v", "2"}
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + d.dir}, d.emu.Env()...)
	drv, err := startDaemon("kvdriver", d.bin, args, env, filepath.Join(d.dir, "kvdriver.log"))
	if err != nil {
		return err
	}
	d.driver = drv
	d.onShutdown("kvdriver", drv.stop)
	conn, ident, node, err := dialCSI(sock)
	if err != nil {
		return err
	}
	d.onShutdown("", conn.Close)
	d.csi, d.ident = node, ident
	return nil
}

// freeLoopbackAddr returns a loopback address with a port nothing listens on.
func freeLoopbackAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("find a free loopback port: %w", err)
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

// driverReady waits until kvdriver says it is ready.
func (d *demo) driverReady(ctx context.Context) error {
	if err := waitReady(ctx, d.ident, d.driver); err != nil {
		return err
	}
	d.step("kvdriver ready on its CSI socket, as ServiceAccount %s with the chart's RBAC", d.ids[kvdriverComponent].serviceAccount)
	d.detail("--object-cache-ttl %s; HTTPS_PROXY=%s (the emulator); log %s",
		cacheTTL, d.emu.ProxyURL(), strings.TrimPrefix(d.driver.logPath, d.dir+"/"))
	return nil
}

// createWorkload stores the namespace, the SecretProviderClass and two pods.
func (d *demo) createWorkload(ctx context.Context) ([]*corev1.Pod, error) {
	if err := d.cp.EnsureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	class, err := createClass(ctx, d.dyn, namespace, filepath.Join(d.root, classFile))
	if err != nil {
		return nil, err
	}
	d.class = class
	if class.tenant != d.app.TenantID {
		return nil, fmt.Errorf("%s: tenantId %s is not the demo application's tenant %s", classFile, class.tenant, d.app.TenantID)
	}
	if _, err := d.cp.CreateServiceAccount(ctx, namespace, serviceAccount, nil); err != nil {
		return nil, fmt.Errorf("create ServiceAccount %s/%s: %w", namespace, serviceAccount, err)
	}
	var pods []*corev1.Pod
	for _, name := range []string{"web-0", "web-1"} {
		pod, err := createPod(ctx, d.cp.Client, namespace, demoPod{name: name, serviceAccount: serviceAccount, class: class.name, spSecret: spSecretName})
		if err != nil {
			return nil, err
		}
		pods = append(pods, pod)
	}
	d.step("stored SecretProviderClass %s/%s from %s (%d objects)", namespace, class.name, classFile, class.objects)
	d.detail("and pods web-0, web-1 with a csi volume of driver %s, nodePublishSecretRef %s", driverName, spSecretName)
	return pods, nil
}

// spSecrets are the nodePublishSecretRef Secret's data, which kubelet passes
// in NodePublishVolume's secrets.
func (d *demo) spSecrets() map[string]string {
	return map[string]string{"clientid": d.app.ClientID, "clientsecret": d.app.Secret}
}

// publish calls NodePublishVolume as kubelet does for pod's volume of
// class, with secrets from its nodePublishSecretRef.
func (d *demo) publish(ctx context.Context, pod *corev1.Pod, class string, secrets map[string]string) (*csipb.NodePublishVolumeRequest, time.Duration, error) {
	req := kubelet.PublishRequest(d.kubeletRoot(), pod, volumeName, class, secrets, nil)
	// What kubelet creates before it calls the driver.
	if err := os.MkdirAll(filepath.Dir(req.TargetPath), 0o750); err != nil {
		return nil, 0, fmt.Errorf("create the volume's directory: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	start := time.Now()
	if _, err := d.csi.NodePublishVolume(cctx, req); err != nil {
		return nil, 0, fmt.Errorf("NodePublishVolume for pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return req, time.Since(start), nil
}

// unpublishRequest is kubelet's NodeUnpublishVolume for a published volume.
func unpublishRequest(req *csipb.NodePublishVolumeRequest) *csipb.NodeUnpublishVolumeRequest {
	return &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath}
}

func (d *demo) kubeletRoot() string { return filepath.Join(d.dir, "kubelet") }

func (d *demo) firstMount(ctx context.Context, pod *corev1.Pod) error {
	since := time.Now()
	req, took, err := d.publish(ctx, pod, d.class.name, d.spSecrets())
	if err != nil {
		return err
	}
	target := req.TargetPath
	d.step("kubelet -> kvdriver: NodePublishVolume for pod %s/%s: ok in %s", pod.Namespace, pod.Name, took.Round(time.Millisecond))
	d.detail("target %s", strings.TrimPrefix(target, d.dir+"/"))
	d.detail("secrets: clientid, clientsecret of %s, as kubelet passes a nodePublishSecretRef", spSecretName)
	fs, err := describeFilesystem(target)
	if err != nil {
		return err
	}
	d.detail("filesystem: %s", fs)
	files, err := fileTree(target)
	if err != nil {
		return err
	}
	d.detail("files (each a symlink into ..data, which is swapped atomically):")
	for _, f := range files {
		d.detail("  %s", f)
	}

	value, err := readVolumeFile(target, "db-password")
	if err != nil {
		return err
	}
	d.detail("db-password   = %s   (the latest version; demo values are fake)", value)
	apiKey, err := readVolumeFile(target, "api-key")
	if err != nil {
		return err
	}
	d.detail("api-key       = %q   (objectEncoding: base64, decoded)", apiKey)
	var history []string
	for i := range 3 {
		v, err := readVolumeFile(target, filepath.Join("feature-flags", fmt.Sprint(i)))
		if err != nil {
			return err
		}
		history = append(history, fmt.Sprintf("%d=%s", i, v))
	}
	d.detail("feature-flags/ %s   (objectVersionHistory: 3, newest first)", strings.Join(history, " "))

	bundle, err := os.ReadFile(filepath.Join(target, "tls", "bundle.pem"))
	if err != nil {
		return fmt.Errorf("read tls/bundle.pem: %w", err)
	}
	blocks, err := describeBundle(bundle)
	if err != nil {
		return fmt.Errorf("tls/bundle.pem: %w", err)
	}
	d.detail("tls/bundle.pem, from certificate web-tls (a PFX in Key Vault%s):", d.shuffleNote("web-tls"))
	for _, b := range blocks {
		d.detail("  %s", b)
	}
	d.detail("  private key first, then leaf -> intermediate -> root (each signed by the next)")

	d.reportRequests(since, "for this mount")
	status, err := d.podStatus(ctx, pod)
	if err != nil {
		return err
	}
	d.detail("%s", status)
	return nil
}

// shuffleNote says so when the seed stores a certificate's chain out of order.
func (d *demo) shuffleNote(cert string) string {
	for _, v := range d.seed.Vaults {
		for _, c := range v.Certificates {
			if c.Name == cert && c.ShuffleChain {
				return " with its CA certificates out of order"
			}
		}
	}
	return ""
}

// reportRequests prints what the emulator answered since a time.
func (d *demo) reportRequests(since time.Time, what string) {
	kv := d.emu.Requests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Since: since})
	entra := d.emu.Requests(emulator.RequestFilter{Service: emulator.ServiceEntra, Since: since})
	d.detail("the emulator counted %s: %s%s", what, plural(len(kv), "Key Vault request"), summarize(kv))
	d.detail("  and %s%s", plural(len(entra), "Entra ID request"), summarize(entra))
}

// podStatus describes the SecretProviderClassPodStatus kvdriver records for
// pod's mount (the upstream driver's object), waiting a little for it.
func (d *demo) podStatus(ctx context.Context, pod *corev1.Pod) (string, error) {
	name := pod.Name + "-" + pod.Namespace + "-" + d.class.name
	var st *unstructured.Unstructured
	deadline := time.Now().Add(10 * time.Second)
	for {
		var err error
		st, err = d.dyn.Resource(spc.SecretProviderClassPodStatusesResource).Namespace(pod.Namespace).Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsNotFound(err) || time.Now().After(deadline) {
			return "", fmt.Errorf("get SecretProviderClassPodStatus %s/%s: %w", pod.Namespace, name, err)
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
	status, _ := st.Object["status"].(map[string]any)
	objects, _ := status["objects"].([]any)
	return fmt.Sprintf("SecretProviderClassPodStatus %s/%s: mounted=%v, node %s, %d object versions recorded",
		pod.Namespace, name, status["mounted"], st.GetLabels()[spc.InternalNodeLabel], len(objects)), nil
}

func (d *demo) cachedMount(ctx context.Context, pod *corev1.Pod) error {
	since := time.Now()
	req, took, err := d.publish(ctx, pod, d.class.name, d.spSecrets())
	if err != nil {
		return err
	}
	kv := d.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceKeyVault, Since: since})
	entra := d.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Since: since})
	value, err := readVolumeFile(req.TargetPath, "db-password")
	if err != nil {
		return err
	}
	d.step("kubelet -> kvdriver: NodePublishVolume for pod %s/%s (same class, same identity): ok in %s",
		pod.Namespace, pod.Name, took.Round(time.Millisecond))
	d.detail("%s, %s: served from kvdriver's object cache (per identity, --object-cache-ttl %s)",
		plural(kv, "Key Vault request"), plural(entra, "Entra ID request"), cacheTTL)
	d.detail("db-password   = %s", value)
	return nil
}

func (d *demo) rotate(ctx context.Context, pod *corev1.Pod) error {
	version, err := d.emu.SetSecret(d.class.vault, "db-password", rotatedValue, emulator.SecretOptions{})
	if err != nil {
		return fmt.Errorf("rotate db-password: %w", err)
	}
	wait := cacheTTL + 200*time.Millisecond
	d.step("rotated db-password in Key Vault (version %s); waiting %s, past the cache TTL", version, wait)
	select {
	case <-time.After(wait):
	case <-ctx.Done():
		return ctx.Err()
	}
	target := kubelet.PublishRequest(d.kubeletRoot(), pod, volumeName, d.class.name, nil, nil).TargetPath
	before, err := os.Readlink(filepath.Join(target, "..data"))
	if err != nil {
		return fmt.Errorf("read ..data: %w", err)
	}
	since := time.Now()
	_, took, err := d.publish(ctx, pod, d.class.name, d.spSecrets())
	if err != nil {
		return err
	}
	value, err := readVolumeFile(target, "db-password")
	if err != nil {
		return err
	}
	after, err := os.Readlink(filepath.Join(target, "..data"))
	if err != nil {
		return fmt.Errorf("read ..data: %w", err)
	}
	d.step("kubelet republishes %s/%s (as it does every minute): ok in %s", pod.Namespace, pod.Name, took.Round(time.Millisecond))
	if value != rotatedValue {
		return fmt.Errorf("after the republish db-password is %q, want the rotated %q", value, rotatedValue)
	}
	d.detail("db-password   = %s   (..data: %s -> %s, one rename)", value, before, after)
	d.reportRequests(since, "for the republish")
	return nil
}

func (d *demo) unpublish(ctx context.Context, pods []*corev1.Pod) error {
	var names []string
	for _, pod := range pods {
		req := kubelet.PublishRequest(d.kubeletRoot(), pod, volumeName, d.class.name, nil, nil)
		cctx, cancel := context.WithTimeout(ctx, time.Minute)
		_, err := d.csi.NodeUnpublishVolume(cctx, &csipb.NodeUnpublishVolumeRequest{VolumeId: req.VolumeId, TargetPath: req.TargetPath})
		cancel()
		if err != nil {
			return fmt.Errorf("NodeUnpublishVolume for pod %s/%s: %w", pod.Namespace, pod.Name, err)
		}
		if _, err := os.Lstat(req.TargetPath); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("after NodeUnpublishVolume %s still exists (%v)", req.TargetPath, err)
		}
		names = append(names, pod.Namespace+"/"+pod.Name)
	}
	left, err := mountsBelow(d.kubeletRoot())
	if err != nil {
		return err
	}
	if len(left) > 0 {
		return fmt.Errorf("after NodeUnpublishVolume still mounted: %s", strings.Join(left, ", "))
	}
	d.step("kubelet -> kvdriver: NodeUnpublishVolume for %s: tmpfs unmounted, targets removed, no mount left under the kubelet root",
		strings.Join(names, " and "))
	return nil
}

func plural(n int, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}
