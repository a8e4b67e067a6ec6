// Package provider forwards the mounts of SecretProviderClasses whose
// spec.provider is not azure to that provider's plugin (HashiCorp Vault,
// Google Secret Manager, AWS, ...), over the upstream secrets-store CSI
// driver's provider protocol on the plugin's unix socket
// <providers-dir>/<provider>.sock, as the upstream driver calls it. The
// plugin fetches; kvdriver checks its answer and writes the files.
package provider

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/providerapi/v1alpha1"
)

// DefaultDirs are where the upstream driver looks for plugin sockets, in
// its order: the additional path first, then its provider volume.
var DefaultDirs = []string{"/etc/kubernetes/secrets-store-csi-providers", "/var/run/secrets-store-csi-providers"}

// DefaultMaxResponseSize is the upstream driver's default
// --max-call-recv-msg-size: the largest Mount answer accepted.
const DefaultMaxResponseSize = 4 << 20

// versionTimeout bounds the Version call made when a plugin is first used
// (the upstream driver's health check allows the same).
const versionTimeout = 5 * time.Second

// nameRE is the upstream driver's rule for a plugin name; it keeps the
// socket path inside the providers directory.
var nameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,30}$`)

// serviceConfig retries a call the plugin could not take (UNAVAILABLE:
// restarting, socket not yet listening) a few times, as upstream's does,
// but without waitForReady: a plugin that is down fails the call in
// seconds rather than holding it until kubelet's deadline.
const serviceConfig = `{"methodConfig": [{
	"name": [{"service": "v1alpha1.CSIDriverProvider"}],
	"retryPolicy": {"maxAttempts": 3, "initialBackoff": "1s", "maxBackoff": "10s",
		"backoffMultiplier": 1.1, "retryableStatusCodes": ["UNAVAILABLE"]}
}]}`

// Options tune Clients.
type Options struct {
	// Dirs are searched in order for <name>.sock; default DefaultDirs.
	Dirs []string
	// MaxResponseSize caps a Mount answer; default DefaultMaxResponseSize.
	MaxResponseSize int
}

// Clients holds one gRPC connection per plugin, made on first use.
type Clients struct {
	opts Options

	mu      sync.Mutex
	plugins map[string]*plugin
}

type plugin struct {
	socket string
	conn   *grpc.ClientConn
	client v1alpha1.CSIDriverProviderClient
}

// NewClients returns clients for the plugins in opts.Dirs.
func NewClients(opts Options) *Clients {
	if len(opts.Dirs) == 0 {
		opts.Dirs = DefaultDirs
	}
	if opts.MaxResponseSize <= 0 {
		opts.MaxResponseSize = DefaultMaxResponseSize
	}
	return &Clients{opts: opts, plugins: map[string]*plugin{}}
}

// ValidName reports what is wrong with a provider name, or "".
func ValidName(name string) string {
	if !nameRE.MatchString(name) {
		return "must be 1 to 30 letters, digits, '-' or '_' (it names the plugin's socket)"
	}
	return ""
}

// Mount sends req to the plugin name and returns its checked answer. A
// plugin is looked up and asked its Version on first use; a connection
// whose plugin stops answering is dropped, so the next mount looks again.
func (c *Clients) Mount(ctx context.Context, name string, req *v1alpha1.MountRequest) (*Result, error) {
	p, err := c.get(ctx, name)
	if err != nil {
		return nil, err
	}
	resp, err := p.client.Mount(ctx, req)
	if err != nil {
		return nil, c.callError(name, p, err)
	}
	res, err := CheckResponse(name, resp)
	var pe *Error
	if errors.As(err, &pe) {
		pe.Socket = p.socket
	}
	return res, err
}

// callError classifies a failed call, and forgets a plugin that is gone.
func (c *Clients) callError(name string, p *plugin, err error) error {
	st := status.Convert(err)
	e := &Error{Kind: KindCall, Provider: name, Socket: p.socket, Status: st.Code(), Err: errors.New(st.Message())}
	switch st.Code() {
	case codes.Unavailable:
		e.Kind = KindUnavailable
		e.Err = fmt.Errorf("does not answer: %s", st.Message())
		c.forget(name, p)
	case codes.ResourceExhausted:
		if strings.Contains(st.Message(), "received message larger than max") {
			e.Err = fmt.Errorf("answer too large: %s (raise --max-call-recv-msg-size)", st.Message())
		}
	}
	return e
}

func (c *Clients) get(ctx context.Context, name string) (*plugin, error) {
	if why := ValidName(name); why != "" {
		return nil, &Error{Kind: KindInvalidName, Provider: name, Err: errors.New(why)}
	}
	c.mu.Lock()
	p := c.plugins[name]
	c.mu.Unlock()
	if p != nil {
		return p, nil
	}
	socket, err := c.find(name)
	if err != nil {
		return nil, err
	}
	conn, err := grpc.NewClient("unix:"+socket,
		grpc.WithAuthority("localhost"),
		// The socket's file permissions are the only protection, as upstream.
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultServiceConfig(serviceConfig),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(c.opts.MaxResponseSize)))
	if err != nil {
		return nil, &Error{Kind: KindUnavailable, Provider: name, Socket: socket, Err: err}
	}
	p = &plugin{socket: socket, conn: conn, client: v1alpha1.NewCSIDriverProviderClient(conn)}
	if err := c.version(ctx, name, p); err != nil {
		conn.Close()
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if other := c.plugins[name]; other != nil { // a concurrent mount connected first
		conn.Close()
		return other, nil
	}
	c.plugins[name] = p
	return p, nil
}

// version asks a new plugin its name and version, so that a socket nobody
// serves fails the mount at once with a clear message. A plugin that does
// not implement Version is still used.
func (c *Clients) version(ctx context.Context, name string, p *plugin) error {
	ctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	resp, err := p.client.Version(ctx, &v1alpha1.VersionRequest{Version: "v1alpha1"})
	switch status.Code(err) {
	case codes.OK:
		klog.FromContext(ctx).Info("Connected to provider", "provider", name, "socket", p.socket,
			"runtimeName", resp.GetRuntimeName(), "runtimeVersion", resp.GetRuntimeVersion())
		return nil
	case codes.Unimplemented:
		return nil
	}
	return &Error{Kind: KindUnavailable, Provider: name, Socket: p.socket,
		Err: fmt.Errorf("does not answer: %s", status.Convert(err).Message())}
}

// find returns the first <dir>/<name>.sock that exists.
func (c *Clients) find(name string) (string, error) {
	var tried []string
	for _, dir := range c.opts.Dirs {
		socket := filepath.Join(dir, name+".sock")
		if _, err := os.Stat(socket); err == nil {
			return socket, nil
		}
		tried = append(tried, socket)
	}
	return "", &Error{Kind: KindNotInstalled, Provider: name,
		Err: fmt.Errorf("not installed on this node: no plugin socket at %s", strings.Join(tried, " or "))}
}

func (c *Clients) forget(name string, p *plugin) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.plugins[name] == p {
		delete(c.plugins, name)
		p.conn.Close()
	}
}

// Close closes every connection.
func (c *Clients) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	for name, p := range c.plugins {
		p.conn.Close()
		delete(c.plugins, name)
	}
}
