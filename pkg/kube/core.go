package kube

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// The core/v1 calls both daemons make go through client-go's REST client
// with a scheme of the three API groups they read and write, not through
// client-go's Clientset. The Clientset (and with it the typed informers
// and the dynamic informer factory, which import it) links and initialises
// every built-in API group, about 290 packages of nearly 900: each package
// a daemon initialises maps pages of its binary at start, and those pages
// stay in the daemon's RSS on every node. See the README's performance
// section for what this saved.

// Scheme holds the types Core reads and writes: core/v1 (pods,
// ServiceAccounts, Secrets, events) and authentication/v1 (TokenRequest).
var Scheme = runtime.NewScheme()

var codecs = serializer.NewCodecFactory(Scheme)

func init() {
	for _, add := range []func(*runtime.Scheme) error{corev1.AddToScheme, authenticationv1.AddToScheme} {
		if err := add(Scheme); err != nil {
			panic(err)
		}
	}
	// List, create and patch options as query parameters.
	metav1.AddToGroupVersion(Scheme, corev1.SchemeGroupVersion)
}

// Core is a client of the core/v1 API for the calls kvnode makes.
type Core struct {
	rc rest.Interface
}

// NewCore returns a core/v1 client for cfg.
func NewCore(cfg *rest.Config) (*Core, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &corev1.SchemeGroupVersion
	c.APIPath = "/api"
	c.NegotiatedSerializer = rest.CodecFactoryForGeneratedClient(Scheme, codecs).WithoutConversion()
	// Protobuf, as Kubernetes' own components read and write built-in
	// types: a fraction of JSON's bytes and decoding work for a list of
	// 50,000 ServiceAccounts.
	c.ContentType = runtime.ContentTypeProtobuf
	c.AcceptContentTypes = runtime.ContentTypeProtobuf + "," + runtime.ContentTypeJSON
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("core/v1 client: %w", err)
	}
	return &Core{rc: rc}, nil
}

// ListWatch lists and watches resource (pods, serviceaccounts) in
// namespace (all when empty), with tweak applied to every request's
// options; a Reflector or an informer runs it.
func (c *Core) ListWatch(resource, namespace string, tweak func(*metav1.ListOptions)) *cache.ListWatch {
	if tweak == nil {
		tweak = func(*metav1.ListOptions) {}
	}
	return cache.NewFilteredListWatchFromClient(c.rc, resource, namespace, tweak)
}

// CreateToken asks the TokenRequest API for a token of ServiceAccount
// namespace/name.
func (c *Core) CreateToken(ctx context.Context, namespace, name string, tr *authenticationv1.TokenRequest, opts metav1.CreateOptions) (*authenticationv1.TokenRequest, error) {
	out := &authenticationv1.TokenRequest{}
	err := c.rc.Post().Namespace(namespace).Resource("serviceaccounts").Name(name).SubResource("token").
		VersionedParams(&opts, metav1.ParameterCodec).Body(tr).Do(ctx).Into(out)
	return out, err
}

// ApplySecret server-side applies Secret namespace/name from body (an
// apply configuration as JSON).
func (c *Core) ApplySecret(ctx context.Context, namespace, name string, body []byte, opts metav1.ApplyOptions) (*corev1.Secret, error) {
	patchOpts := opts.ToPatchOptions()
	return c.PatchSecret(ctx, namespace, name, types.ApplyPatchType, body, patchOpts)
}

// PatchSecret patches Secret namespace/name; a missing Secret is NotFound.
func (c *Core) PatchSecret(ctx context.Context, namespace, name string, pt types.PatchType, body []byte, opts metav1.PatchOptions) (*corev1.Secret, error) {
	out := &corev1.Secret{}
	err := c.rc.Patch(pt).Namespace(namespace).Resource("secrets").Name(name).
		VersionedParams(&opts, metav1.ParameterCodec).Body(body).Do(ctx).Into(out)
	return out, err
}

// EventSink is where client-go's event broadcaster sends events: each in
// its own namespace, as kubelet's and controllers' events are.
func (c *Core) EventSink() record.EventSink { return eventSink{c.rc} }

type eventSink struct{ rc rest.Interface }

func (s eventSink) Create(e *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.rc.Post().Namespace(e.Namespace).Resource("events").Body(e).Do(context.Background()).Into(out)
	return out, err
}

func (s eventSink) Update(e *corev1.Event) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.rc.Put().Namespace(e.Namespace).Resource("events").Name(e.Name).Body(e).Do(context.Background()).Into(out)
	return out, err
}

func (s eventSink) Patch(e *corev1.Event, data []byte) (*corev1.Event, error) {
	out := &corev1.Event{}
	err := s.rc.Patch(types.StrategicMergePatchType).Namespace(e.Namespace).Resource("events").Name(e.Name).
		Body(data).Do(context.Background()).Into(out)
	return out, err
}
