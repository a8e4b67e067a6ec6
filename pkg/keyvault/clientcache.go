package keyvault

import (
	"container/list"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// clientKey identifies the SDK clients of one identity on one vault.
type clientKey struct {
	vaultURL string
	identity string
}

// vaultClients are the three SDK clients for one vault and identity. Each
// SDK client holds its own challenge state and bearer token, so reusing them
// is what saves the 401 round trip and the token lookup on every mount.
type vaultClients struct {
	cred    *credentialRef
	secrets *azsecrets.Client
	keys    *azkeys.Client
	certs   *azcertificates.Client
	// One first-request gate per SDK client: see firstCall.
	secretsFirst, keysFirst, certsFirst *firstCall
}

func newVaultClients(vaultURL string, cred azcore.TokenCredential, opts azcore.ClientOptions) (*vaultClients, error) {
	ref := &credentialRef{}
	ref.set(cred)
	vc := &vaultClients{cred: ref, secretsFirst: newFirstCall(), keysFirst: newFirstCall(), certsFirst: newFirstCall()}
	var err error
	if vc.secrets, err = azsecrets.NewClient(vaultURL, ref, &azsecrets.ClientOptions{ClientOptions: opts}); err != nil {
		return nil, fmt.Errorf("create secrets client for %s: %w", vaultURL, err)
	}
	if vc.keys, err = azkeys.NewClient(vaultURL, ref, &azkeys.ClientOptions{ClientOptions: opts}); err != nil {
		return nil, fmt.Errorf("create keys client for %s: %w", vaultURL, err)
	}
	if vc.certs, err = azcertificates.NewClient(vaultURL, ref, &azcertificates.ClientOptions{ClientOptions: opts}); err != nil {
		return nil, fmt.Errorf("create certificates client for %s: %w", vaultURL, err)
	}
	return vc, nil
}

// credentialRef is the credential the cached SDK clients use: the one the
// latest Fetch for that identity passed. A caller that builds a fresh
// credential for every mount (a workload-identity credential around the
// pod's newest service-account token, say) thus keeps the cached clients and
// their tokens, and the next token request uses the newest credential.
type credentialRef struct {
	p atomic.Pointer[credentialBox]
}

type credentialBox struct{ cred azcore.TokenCredential }

func (r *credentialRef) set(c azcore.TokenCredential) { r.p.Store(&credentialBox{c}) }

// GetToken implements azcore.TokenCredential.
func (r *credentialRef) GetToken(ctx context.Context, opts policy.TokenRequestOptions) (azcore.AccessToken, error) {
	return r.p.Load().cred.GetToken(ctx, opts)
}

var _ azcore.TokenCredential = (*credentialRef)(nil)

// firstCall makes the first request of a new SDK client go alone. The SDK's
// Key Vault policy learns the token's scope and tenant from a 401 challenge
// answered to a request sent without a token; requests sent in parallel
// before the first challenge is answered would each draw their own 401.
// Once one request has got past the challenge, calls run without waiting.
type firstCall struct {
	sem  chan struct{}
	done atomic.Bool
}

func newFirstCall() *firstCall { return &firstCall{sem: make(chan struct{}, 1)} }

func (g *firstCall) do(ctx context.Context, fn func() error) error {
	if g.done.Load() {
		return fn()
	}
	select {
	case g.sem <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	if g.done.Load() {
		<-g.sem
		return fn()
	}
	defer func() { <-g.sem }()
	err := fn()
	if pastChallenge(err) {
		g.done.Store(true)
	}
	return err
}

// pastChallenge reports whether a request that ended with err got past the
// challenge: it succeeded, or Key Vault answered it with a token-holding
// error (a 401 is also what a request without a token gets).
func pastChallenge(err error) bool {
	if err == nil {
		return true
	}
	var re *azcore.ResponseError
	return errors.As(err, &re) && re.StatusCode != http.StatusUnauthorized
}

// clientCache keeps the SDK clients of the most recently used
// (vault, identity) pairs, at most max of them.
type clientCache struct {
	opts    azcore.ClientOptions
	max     int
	metrics *Metrics // nil: none

	mu    sync.Mutex
	order *list.List // of *cacheEntry, most recently used first
	items map[clientKey]*list.Element
}

type cacheEntry struct {
	key     clientKey
	clients *vaultClients
}

func newClientCache(opts azcore.ClientOptions, max int) *clientCache {
	return &clientCache{opts: opts, max: max, order: list.New(), items: map[clientKey]*list.Element{}}
}

// get returns the clients for key, creating them (no I/O) if needed, and
// makes cred the credential they use from now on. An empty identity is never
// cached: without a key there is no telling credentials apart.
func (c *clientCache) get(key clientKey, cred azcore.TokenCredential) (*vaultClients, error) {
	if key.identity == "" {
		return newVaultClients(key.vaultURL, cred, c.opts)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.items[key]; ok {
		c.order.MoveToFront(el)
		vc := el.Value.(*cacheEntry).clients
		vc.cred.set(cred)
		return vc, nil
	}
	vc, err := newVaultClients(key.vaultURL, cred, c.opts)
	if err != nil {
		return nil, err
	}
	c.items[key] = c.order.PushFront(&cacheEntry{key: key, clients: vc})
	for c.order.Len() > c.max {
		last := c.order.Back()
		c.order.Remove(last)
		delete(c.items, last.Value.(*cacheEntry).key)
	}
	c.metrics.clients(c.order.Len())
	return vc, nil
}

// len is the number of cached entries.
func (c *clientCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.order.Len()
}
