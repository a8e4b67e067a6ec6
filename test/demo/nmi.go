package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/kvnode/kvnode/pkg/bindings"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/podnet"
)

// The node's pod network, a routed CNI in miniature (package podnet; the
// node is the demo's own namespace). nmi listens on an address of the
// node's lo, where its nat rule sends pods' 169.254.169.254:80.
const (
	nmiListenIP   = "10.200.0.1"
	nmiListenPort = 2579
	podGateway    = "10.244.0.1"
	// tokenScope is what the pods' SDK asks a token for.
	tokenScope = "https://vault.azure.net/.default"
	// identitySA is annotated with the seed's managed identity; unboundSA
	// has no identity.
	identitySA = "api"
	unboundSA  = "batch"
)

// podIdentityClassFile is the SecretProviderClass mounted with the pod's
// identity, relative to the repository.
const podIdentityClassFile = "examples/secretproviderclass-pod-identity-demo.yaml"

// podNet is a pod with a network namespace on the node.
type podNet struct {
	pod *corev1.Pod
	net podnet.Pod
}

func (p *podNet) String() string { return p.pod.Namespace + "/" + p.pod.Name }

// netnsPrefix names the demo's pod network namespaces; the outer process
// removes any a killed demo left behind by it.
func netnsPrefix(dir string) string { return filepath.Base(dir) + "-" }

// createIdentityWorkload stores the managed identity's ServiceAccount, an
// unbound one, the pod-identity SecretProviderClass and a pod of each
// ServiceAccount on the node, and wires each pod's network namespace.
func (d *demo) createIdentityWorkload(ctx context.Context) error {
	if _, err := d.cp.CreateServiceAccount(ctx, namespace, identitySA, map[string]string{bindings.ClientIDAnnotation: d.mi.ClientID}); err != nil {
		return fmt.Errorf("create ServiceAccount %s/%s: %w", namespace, identitySA, err)
	}
	if _, err := d.cp.CreateServiceAccount(ctx, namespace, unboundSA, nil); err != nil {
		return fmt.Errorf("create ServiceAccount %s/%s: %w", namespace, unboundSA, err)
	}
	class, err := createClass(ctx, d.dyn, namespace, filepath.Join(d.root, podIdentityClassFile))
	if err != nil {
		return err
	}
	d.podClass = class
	for i, p := range []demoPod{
		{name: "api-0", serviceAccount: identitySA, class: class.name},
		{name: "batch-0", serviceAccount: unboundSA},
	} {
		p.node = nodeName
		pod, err := createPod(ctx, d.cp.Client, namespace, p)
		if err != nil {
			return err
		}
		pn := &podNet{pod: pod, net: podnet.Pod{Netns: netnsPrefix(d.dir) + p.name, HostIf: "kvd-" + p.name,
			IP: fmt.Sprintf("10.244.1.%d", i+2), Gateway: podGateway}}
		d.onShutdown("", pn.net.Remove)
		if err := pn.net.Add(); err != nil {
			return fmt.Errorf("wire pod %s's network: %w", pn, err)
		}
		if pn.pod, err = reportRunning(ctx, d.cp.Client, pod, pn.net.IP); err != nil {
			return err
		}
		d.podNets = append(d.podNets, pn)
	}
	return nil
}

// removeLeftPodNetworks deletes the pod network namespaces of the demo whose
// directory is dir, which a killed demo leaves in /run/netns.
func removeLeftPodNetworks(dir string) error {
	entries, err := os.ReadDir("/run/netns")
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("list network namespaces: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), netnsPrefix(dir)) {
			if err := podnet.IP("netns", "del", e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// startNMI starts nmi as the chart's ServiceAccount, with the emulator as
// the node's IMDS (through the proxy variables) and the seed's managed
// identity as a node identity that a ServiceAccount annotation may bind.
func (d *demo) startNMI() error {
	id := d.ids[nmiComponent]
	kubeconfig, err := d.cp.WriteKubeconfig(filepath.Join(d.dir, "nmi"), id.config)
	if err != nil {
		return fmt.Errorf("write nmi's kubeconfig: %w", err)
	}
	if err := podnet.IP("addr", "add", nmiListenIP+"/32", "dev", "lo"); err != nil {
		return fmt.Errorf("put nmi's address on lo: %w", err)
	}
	args := []string{"--node-name", nodeName, "--kubeconfig", kubeconfig,
		"--listen-addr", net.JoinHostPort(nmiListenIP, strconv.Itoa(nmiListenPort)), "--host-addr", d.nmiHost,
		"--node-identities", d.mi.ClientID, "-v", "2"}
	env := append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + d.dir}, d.emu.Env()...)
	p, err := startDaemon("nmi", d.nmiBin, args, env, filepath.Join(d.dir, "nmi.log"))
	if err != nil {
		return err
	}
	d.nmi = p
	d.onShutdown("nmi (its iptables rules removed)", func() error {
		if err := p.stop(); err != nil {
			return err
		}
		return noRulesLeft()
	})
	return nil
}

// noRulesLeft checks that nmi removed its chains when it stopped.
func noRulesLeft() error {
	for _, table := range []string{"nat", "raw"} {
		out, err := exec.Command("iptables", "-w", "-t", table, "-S").CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables -t %s -S: %v: %s", table, err, bytes.TrimSpace(out))
		}
		if bytes.Contains(out, []byte("KVNODE")) {
			return fmt.Errorf("nmi left rules in the %s table:\n%s", table, out)
		}
	}
	return nil
}

// nmiReady waits until nmi is ready, knows the demo's pods and has their
// anti-spoofing rules, and shows its interception rule.
func (d *demo) nmiReady(ctx context.Context) error {
	deadline := time.Now().Add(30 * time.Second)
	var last string
	for {
		ok, why := d.nmiKnowsPods(ctx)
		if ok {
			break
		}
		last = why
		select {
		case <-d.nmi.done:
			return fmt.Errorf("nmi exited: %v", d.nmi.err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nmi was not ready after 30s: %s", last)
		}
	}
	d.step("nmi ready, as ServiceAccount %s with the chart's RBAC; log %s", d.ids[nmiComponent].serviceAccount,
		strings.TrimPrefix(d.nmi.logPath, d.dir+"/"))
	rule, err := natRule(net.JoinHostPort(nmiListenIP, strconv.Itoa(nmiListenPort)))
	if err != nil {
		return err
	}
	d.detail("iptables -t nat: %s", rule)
	for _, p := range d.podNets {
		d.detail("pod %s (ServiceAccount %s): %s on eth0, veth %s on the node", p, p.pod.Spec.ServiceAccountName, p.net.IP, p.net.HostIf)
	}
	d.detail("ServiceAccount %s/%s: %s=%s, the managed identity %s",
		namespace, identitySA, bindings.ClientIDAnnotation, d.mi.ClientID, path.Base(d.mi.ResourceID))
	return nil
}

// nmiKnowsPods says whether nmi is ready with every demo pod in its index and
// an anti-spoofing rule on each pod's veth, or what it still lacks.
func (d *demo) nmiKnowsPods(ctx context.Context) (bool, string) {
	status, _, err := d.nmiGet(ctx, "/readyz")
	if err != nil || status != http.StatusOK {
		return false, fmt.Sprintf("/readyz: %d %v", status, err)
	}
	_, metrics, err := d.nmiGet(ctx, "/metrics")
	if err != nil {
		return false, err.Error()
	}
	if n := metricValue(metrics, "kvnode_nmi_pod_index_pods"); n < float64(len(d.podNets)) {
		return false, fmt.Sprintf("kvnode_nmi_pod_index_pods %v", n)
	}
	out, err := exec.CommandContext(ctx, "iptables", "-w", "-t", "raw", "-S").Output()
	if err != nil {
		return false, fmt.Sprintf("iptables -t raw -S: %v", err)
	}
	for _, p := range d.podNets {
		if !bytes.Contains(out, []byte("! -s "+p.net.IP+"/32 -i "+p.net.HostIf+" -j DROP")) {
			return false, "no anti-spoofing rule for " + p.net.HostIf
		}
	}
	return true, ""
}

func (d *demo) nmiGet(ctx context.Context, path string) (int, string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+d.nmiHost+path, nil)
	if err != nil {
		return 0, "", err
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	var b bytes.Buffer
	_, err = b.ReadFrom(resp.Body)
	return resp.StatusCode, b.String(), err
}

// metricValue returns the value of an unlabelled gauge in a Prometheus
// text exposition, or -1.
func metricValue(exposition, name string) float64 {
	parser := expfmt.NewTextParser(model.LegacyValidation)
	families, err := parser.TextToMetricFamilies(strings.NewReader(exposition))
	if err != nil || families[name] == nil || len(families[name].GetMetric()) != 1 {
		return -1
	}
	return families[name].GetMetric()[0].GetGauge().GetValue()
}

// natRule returns the nat table's rule that DNATs to addr.
func natRule(addr string) (string, error) {
	out, err := exec.Command("iptables", "-w", "-t", "nat", "-S").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("iptables -t nat -S: %v: %s", err, bytes.TrimSpace(out))
	}
	for _, line := range strings.Split(string(out), "\n") {
		if strings.Contains(line, "--to-destination "+addr) {
			return line, nil
		}
	}
	return "", fmt.Errorf("no nat rule DNATs to %s:\n%s", addr, out)
}

// sdkToken is what sdkclient's token operation prints.
type sdkToken struct {
	Token *struct {
		ExpiresOn string         `json:"expires_on"`
		Claims    map[string]any `json:"claims"`
	} `json:"token"`
	Error *struct {
		Kind    string `json:"kind"`
		Status  int    `json:"status"`
		Message string `json:"message"`
	} `json:"error"`
}

// tokenInPod runs the unmodified Azure SDK client in p's network namespace,
// with an application's environment (no proxy, no Azure settings): its
// ManagedIdentityCredential dials 169.254.169.254 itself.
func (d *demo) tokenInPod(ctx context.Context, p *podNet) (sdkToken, time.Duration, error) {
	cctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	cmd := exec.CommandContext(cctx, "ip", "netns", "exec", p.net.Netns, d.sdkClient,
		"-cred", "managed-identity", "-timeout", "30s", "token", "-scope", tokenScope)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + d.dir}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	runErr := cmd.Run()
	took := time.Since(start)
	var res sdkToken
	if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || (res.Token == nil && res.Error == nil) {
		return res, took, fmt.Errorf("the Azure SDK client in pod %s: %v (stdout %q, stderr %q)", p, runErr, stdout.Bytes(), stderr.Bytes())
	}
	return res, took, nil
}

// identityStory shows nmi's job: tokens for a bound pod, from its cache the
// second time, a refusal for an unbound pod, and a mount with the pod's
// identity.
func (d *demo) identityStory(ctx context.Context) error {
	if err := d.nmiReady(ctx); err != nil {
		return err
	}
	api, batch := d.podNets[0], d.podNets[1]

	since := time.Now()
	res, took, err := d.tokenInPod(ctx, api)
	if err != nil {
		return err
	}
	if res.Error != nil {
		return fmt.Errorf("pod %s got no token: %d %s", api, res.Error.Status, res.Error.Message)
	}
	d.step("pod %s -> 169.254.169.254: Azure SDK ManagedIdentityCredential, no options: token in %s", api, took.Round(time.Millisecond))
	d.detail("appid %v (the managed identity), aud %v, tid %v", res.Token.Claims["appid"], res.Token.Claims["aud"], res.Token.Claims["tid"])
	if appID := fmt.Sprint(res.Token.Claims["appid"]); appID != d.mi.ClientID {
		return fmt.Errorf("pod %s got a token for %s, want the managed identity %s", api, appID, d.mi.ClientID)
	}
	d.detail("expires %s; the token itself is never printed", expiry(res.Token.ExpiresOn))
	d.reportIdentityRequests(since, "nmi asked upstream for it")

	since = time.Now()
	again, took, err := d.tokenInPod(ctx, api)
	if err != nil {
		return err
	}
	if again.Error != nil {
		return fmt.Errorf("pod %s got no token the second time: %d %s", api, again.Error.Status, again.Error.Message)
	}
	imds := d.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Since: since})
	entra := d.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Since: since})
	d.step("pod %s asks again (a new process, as after a restart): token in %s, same expiry", api, took.Round(time.Millisecond))
	d.detail("%s, %s: served from nmi's token cache", plural(imds, "IMDS request"), plural(entra, "Entra ID request"))

	refused, _, err := d.tokenInPod(ctx, batch)
	if err != nil {
		return err
	}
	if refused.Error == nil {
		return fmt.Errorf("pod %s, which has no identity, got a token for %v", batch, refused.Token.Claims["appid"])
	}
	d.step("pod %s (ServiceAccount %s, no identity bound) asks the same: refused, HTTP %d", batch, unboundSA, refused.Error.Status)
	d.detail("nmi's answer, as the SDK reports it: %s", refusalBody(refused.Error.Message))
	if refused.Error.Status != http.StatusForbidden {
		return fmt.Errorf("pod %s was refused with %d, want 403", batch, refused.Error.Status)
	}
	return d.podIdentityMount(ctx, api)
}

// podIdentityMount publishes the pod-identity class for p: kvdriver gets
// the pod's token from nmi.
func (d *demo) podIdentityMount(ctx context.Context, p *podNet) error {
	since := time.Now()
	req, took, err := d.publish(ctx, p.pod, d.podClass.name, nil)
	if err != nil {
		return err
	}
	d.step("kubelet -> kvdriver: NodePublishVolume for pod %s, class %s (usePodIdentity): ok in %s",
		p, d.podClass.name, took.Round(time.Millisecond))
	d.detail("kvdriver asked nmi (/host/token/, node-only) for the token of the identity bound to %s", p)
	files, err := fileTree(req.TargetPath)
	if err != nil {
		return err
	}
	for _, f := range files {
		d.detail("  %s", f)
	}
	value, err := readVolumeFile(req.TargetPath, "db-password")
	if err != nil {
		return err
	}
	d.detail("db-password   = %s   (read with the managed identity's token)", value)
	d.reportRequests(since, "for this mount")
	d.reportIdentityRequests(since, "and for the pod's token (nmi had it cached)")
	if _, err := d.csi.NodeUnpublishVolume(ctx, unpublishRequest(req)); err != nil {
		return fmt.Errorf("NodeUnpublishVolume for pod %s: %w", p, err)
	}
	d.step("kubelet -> kvdriver: NodeUnpublishVolume for %s: unmounted", p)
	return nil
}

// reportIdentityRequests prints the IMDS and Entra ID token requests the
// emulator answered since a time.
func (d *demo) reportIdentityRequests(since time.Time, what string) {
	imds := d.emu.Requests(emulator.RequestFilter{Service: emulator.ServiceIMDS, Since: since})
	entra := d.emu.CountRequests(emulator.RequestFilter{Service: emulator.ServiceEntra, Since: since})
	d.detail("%s: %s (to the node's IMDS, here the emulator), %s",
		what, plural(len(imds), "IMDS request"), plural(entra, "Entra ID request"))
}

// expiry describes an RFC 3339 expiry time and how far away it is.
func expiry(at string) string {
	t, err := time.Parse(time.RFC3339, at)
	if err != nil {
		return at
	}
	return fmt.Sprintf("%s (in %s)", t.Format("15:04:05 MST"), time.Until(t).Round(time.Minute))
}

// refusalBody returns the IMDS error body that an azidentity error message
// quotes (indented JSON after the status line), or the message's first line.
func refusalBody(msg string) string {
	if i := strings.Index(msg, "{"); i >= 0 {
		var body struct {
			Error       string `json:"error"`
			Description string `json:"error_description"`
		}
		if json.NewDecoder(strings.NewReader(msg[i:])).Decode(&body) == nil && body.Error != "" {
			return fmt.Sprintf("%s: %s", body.Error, body.Description)
		}
	}
	line, _, _ := strings.Cut(strings.TrimSpace(msg), "\n")
	return line
}
