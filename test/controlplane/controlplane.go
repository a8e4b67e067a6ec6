// Package controlplane starts a real Kubernetes control plane for tests (Start)
// and for programs such as the demo (New): etcd and kube-apiserver on loopback
// with random ports, RBAC on, and a service-account issuer and signing keys so
// that TokenRequest issues real service-account tokens.
//
// It uses controller-runtime's envtest with binaries from $KUBEBUILDER_ASSETS
// or, when that is unset, from hack/controlplane-bins.sh, which builds the
// pinned versions once into a cache outside the repository.
package controlplane

import (
	"cmp"
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kvnode/kvnode/test/pinned"
)

// ControlPlane is a running etcd + kube-apiserver.
type ControlPlane struct {
	env *envtest.Environment
	// certDir holds kube-apiserver's serving certificate and
	// service-account keys; it outlives a StopAPIServer.
	certDir string
	// Config is an admin (system:masters) client configuration.
	Config *rest.Config
	// Client is a clientset for Config.
	Client kubernetes.Interface
	// Issuer is the service-account token issuer (the iss claim).
	Issuer string
}

// CertDir holds kube-apiserver's serving certificate, the client CA
// (client-cert-auth-ca.crt) and the service-account signing key pair
// (sa-signer.key, sa-signer.crt), for the controllers that need them.
func (cp *ControlPlane) CertDir() string { return cp.certDir }

// Options tune Start and New.
type Options struct {
	// CRDDirectoryPaths are directories or files of CustomResourceDefinitions
	// to install before Start returns.
	CRDDirectoryPaths []string
	// SecurePort, when set, is kube-apiserver's port instead of a free
	// one, on SecureAddress (an IP already on a local interface; default
	// 127.0.0.1), which its serving certificate then names.
	SecurePort    int
	SecureAddress string
	// ServiceAccountAdmission turns on the ServiceAccount admission plugin,
	// which envtest turns off: pods then get their ServiceAccount's token
	// volume, as on any cluster. Their namespaces' ServiceAccounts must then
	// exist (kube-controller-manager creates the default ones).
	ServiceAccountAdmission bool
	// APIServerArgs are more kube-apiserver flags (name without dashes ->
	// values), set over envtest's.
	APIServerArgs map[string][]string
}

// Start starts a control plane and stops it when the test ends.
func Start(t testing.TB, opts Options) *ControlPlane {
	t.Helper()
	cp, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cp.Stop(); err != nil {
			t.Error(err)
		}
	})
	return cp
}

// New starts a control plane, for programs that are not tests. The caller
// must Stop it.
func New(opts Options) (*ControlPlane, error) {
	assets, err := pinned.ControlPlane.Path()
	if err != nil {
		return nil, fmt.Errorf("control plane binaries: %w", err)
	}
	env := &envtest.Environment{
		BinaryAssetsDirectory:    assets,
		CRDDirectoryPaths:        opts.CRDDirectoryPaths,
		ErrorIfCRDPathMissing:    true,
		ControlPlaneStartTimeout: 60 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	// The test namespace has no default route, from which kube-apiserver
	// would otherwise pick the address it advertises; loopback is refused as
	// an advertised address unless no endpoints are reconciled for it.
	apiserver := env.ControlPlane.GetAPIServer()
	args := apiserver.Configure()
	args.Set("advertise-address", "127.0.0.1")
	args.Set("endpoint-reconciler-type", "none")
	if opts.ServiceAccountAdmission {
		args.Disable("disable-admission-plugins")
	}
	for name, values := range opts.APIServerArgs {
		args.Set(name, values...)
	}
	if opts.SecurePort != 0 {
		// envtest keeps an address and port that are both set.
		apiserver.SecureServing.Address = cmp.Or(opts.SecureAddress, "127.0.0.1")
		apiserver.SecureServing.Port = strconv.Itoa(opts.SecurePort)
	}
	// A directory of our own, which envtest keeps when kube-apiserver
	// stops (it removes one it made): a restarted kube-apiserver serves
	// the same certificate and accepts the service-account tokens issued
	// before (StopAPIServer, StartAPIServer).
	certDir, err := os.MkdirTemp("", "kvnode-apiserver-")
	if err != nil {
		return nil, err
	}
	apiserver.CertDir = certDir
	stop := func() { _ = env.Stop(); _ = os.RemoveAll(certDir) }
	cfg, err := env.Start()
	if err != nil {
		stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		stop()
		return nil, fmt.Errorf("clientset: %w", err)
	}
	// envtest sets --service-account-issuer to the secure serving URL.
	issuer := env.ControlPlane.APIServer.SecureServing.URL("https", "/").String()
	return &ControlPlane{env: env, certDir: certDir, Config: cfg, Client: client, Issuer: issuer}, nil
}

// Stop stops kube-apiserver and etcd and removes their data.
func (cp *ControlPlane) Stop() error {
	err := cp.env.Stop()
	if rerr := os.RemoveAll(cp.certDir); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("stop control plane: %w", err)
	}
	return nil
}

// StopAPIServer stops kube-apiserver, as a crash or an outage does, and
// leaves etcd running: clients get connection refused until
// StartAPIServer. kube-apiserver gets SIGTERM and, a second later, SIGKILL:
// its graceful shutdown can wait out its clients' open watches.
func (cp *ControlPlane) StopAPIServer() error {
	s := cp.env.ControlPlane.APIServer
	saved := s.StopTimeout
	s.StopTimeout = time.Second
	err := s.Stop()
	s.StopTimeout = saved
	if err != nil && !strings.Contains(err.Error(), "timeout waiting for process") {
		return fmt.Errorf("stop kube-apiserver: %w", err)
	}
	addr := net.JoinHostPort(s.SecureServing.Address, s.SecureServing.Port)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return nil
		}
		c.Close()
	}
	return fmt.Errorf("stop kube-apiserver: %s still accepts connections", addr)
}

// StartAPIServer starts kube-apiserver again after StopAPIServer, on the
// same address with the same certificates, keys and data, and returns once
// it is healthy.
func (cp *ControlPlane) StartAPIServer() error {
	if err := cp.env.ControlPlane.APIServer.Start(); err != nil {
		return fmt.Errorf("restart kube-apiserver: %w", err)
	}
	return nil
}

// CreateServiceAccount creates a namespace (if missing) and a ServiceAccount
// in it with the given annotations.
func (cp *ControlPlane) CreateServiceAccount(ctx context.Context, namespace, name string, annotations map[string]string) (*corev1.ServiceAccount, error) {
	if err := cp.EnsureNamespace(ctx, namespace); err != nil {
		return nil, err
	}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name, Annotations: annotations}}
	return cp.Client.CoreV1().ServiceAccounts(namespace).Create(ctx, sa, metav1.CreateOptions{})
}

// EnsureNamespace creates namespace unless it exists.
func (cp *ControlPlane) EnsureNamespace(ctx context.Context, namespace string) error {
	_, err := cp.Client.CoreV1().Namespaces().Get(ctx, namespace, metav1.GetOptions{})
	if err == nil {
		return nil
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: namespace}}
	if _, err := cp.Client.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create namespace %s: %w", namespace, err)
	}
	return nil
}

// ServiceAccountToken asks the TokenRequest API for a token of the
// ServiceAccount namespace/name, for audiences (the API server's when empty),
// optionally bound to a pod.
func (cp *ControlPlane) ServiceAccountToken(ctx context.Context, namespace, name string, audiences []string, ttl time.Duration, boundPod *corev1.Pod) (*authenticationv1.TokenRequestStatus, error) {
	tr := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{Audiences: audiences}}
	if ttl > 0 {
		tr.Spec.ExpirationSeconds = ptr.To(int64(ttl / time.Second))
	}
	if boundPod != nil {
		tr.Spec.BoundObjectRef = &authenticationv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: boundPod.Name, UID: boundPod.UID}
	}
	out, err := cp.Client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name, tr, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("token for %s/%s: %w", namespace, name, err)
	}
	return &out.Status, nil
}

// AsServiceAccount returns a client configuration that authenticates as the
// ServiceAccount namespace/name with a token from TokenRequest.
func (cp *ControlPlane) AsServiceAccount(ctx context.Context, namespace, name string) (*rest.Config, error) {
	st, err := cp.ServiceAccountToken(ctx, namespace, name, nil, time.Hour, nil)
	if err != nil {
		return nil, err
	}
	cfg := rest.AnonymousClientConfig(cp.Config)
	cfg.BearerToken = st.Token
	return cfg, nil
}

// JWKS returns the issuer's public signing keys as a JSON Web Key Set, as the
// API server serves them at /openid/v1/jwks.
func (cp *ControlPlane) JWKS(ctx context.Context) ([]byte, error) {
	b, err := cp.Client.CoreV1().RESTClient().Get().AbsPath("/openid/v1/jwks").DoRaw(ctx)
	if err != nil {
		return nil, fmt.Errorf("get /openid/v1/jwks: %w", err)
	}
	return b, nil
}

// WriteKubeconfig writes a kubeconfig file for cfg (the admin's when nil) and
// returns its path, for binaries under test.
func (cp *ControlPlane) WriteKubeconfig(dir string, cfg *rest.Config) (string, error) {
	if cfg == nil {
		cfg = cp.Config
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken,
	}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	path := filepath.Join(dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return "", err
	}
	return path, nil
}
