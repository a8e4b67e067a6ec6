package keyvault

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// kind is what the fetcher needs of one object type: a GET and a versions
// listing through that type's SDK client. One small adapter per type keeps
// the type switch in one place (kindOf).
type kind interface {
	// get fetches one version (empty: the latest).
	get(ctx context.Context, vc *vaultClients, name, version string) (*rawObject, error)
	// versions lists the versions, calling add for each with its enabled
	// flag, creation time and version ID.
	versions(ctx context.Context, vc *vaultClients, name string, add func(enabled *bool, created *time.Time, version string)) error
}

// rawObject is one object version as Key Vault returned it, with what
// renders it as a file for a given Object.
type rawObject struct {
	version string
	render  func(obj *Object) (content []byte, warning string, err error)
}

var errNoValue = errors.New("the secret has no value")

func kindOf(t ObjectType) kind {
	switch t {
	case TypeKey:
		return keyKind{}
	case TypeCert:
		return certKind{}
	}
	return secretKind{}
}

type secretKind struct{}

func (secretKind) get(ctx context.Context, vc *vaultClients, name, version string) (*rawObject, error) {
	var raw *rawObject
	err := vc.secretsFirst.do(ctx, func() error {
		resp, err := vc.secrets.GetSecret(ctx, name, version, nil)
		if err != nil {
			return err
		}
		raw = &rawObject{}
		if resp.ID != nil {
			raw.version = resp.ID.Version()
		}
		if resp.Value == nil {
			raw.render = func(*Object) ([]byte, string, error) { return nil, "", errNoValue }
			return nil
		}
		secret := Secret{Value: *resp.Value, CertificateBacked: resp.KID != nil && *resp.KID != ""}
		if resp.ContentType != nil {
			secret.ContentType = *resp.ContentType
		}
		raw.render = func(obj *Object) ([]byte, string, error) { return SecretContent(*obj, secret) }
		return nil
	})
	return raw, err
}

func (secretKind) versions(ctx context.Context, vc *vaultClients, name string, add func(*bool, *time.Time, string)) error {
	return vc.secretsFirst.do(ctx, func() error {
		return eachPage(ctx, vc.secrets.NewListSecretPropertiesVersionsPager(name, nil), func(page azsecrets.ListSecretPropertiesVersionsResponse) {
			for _, it := range page.Value {
				if it == nil || it.ID == nil {
					continue
				}
				var a azsecrets.SecretAttributes
				if it.Attributes != nil {
					a = *it.Attributes
				}
				add(a.Enabled, a.Created, it.ID.Version())
			}
		})
	})
}

type keyKind struct{}

func (keyKind) get(ctx context.Context, vc *vaultClients, name, version string) (*rawObject, error) {
	var raw *rawObject
	err := vc.keysFirst.do(ctx, func() error {
		resp, err := vc.keys.GetKey(ctx, name, version, nil)
		if err != nil {
			return err
		}
		raw = &rawObject{}
		if resp.Key != nil && resp.Key.KID != nil {
			raw.version = resp.Key.KID.Version()
		}
		jwk := resp.Key
		raw.render = func(*Object) ([]byte, string, error) {
			content, err := KeyPEM(jwk)
			return content, "", err
		}
		return nil
	})
	return raw, err
}

func (keyKind) versions(ctx context.Context, vc *vaultClients, name string, add func(*bool, *time.Time, string)) error {
	return vc.keysFirst.do(ctx, func() error {
		return eachPage(ctx, vc.keys.NewListKeyPropertiesVersionsPager(name, nil), func(page azkeys.ListKeyPropertiesVersionsResponse) {
			for _, it := range page.Value {
				if it == nil || it.KID == nil {
					continue
				}
				var a azkeys.KeyAttributes
				if it.Attributes != nil {
					a = *it.Attributes
				}
				add(a.Enabled, a.Created, it.KID.Version())
			}
		})
	})
}

type certKind struct{}

func (certKind) get(ctx context.Context, vc *vaultClients, name, version string) (*rawObject, error) {
	var raw *rawObject
	err := vc.certsFirst.do(ctx, func() error {
		resp, err := vc.certs.GetCertificate(ctx, name, version, nil)
		if err != nil {
			return err
		}
		raw = &rawObject{}
		if resp.ID != nil {
			raw.version = resp.ID.Version()
		}
		cer := resp.CER
		raw.render = func(*Object) ([]byte, string, error) {
			content, err := CertificatePEM(cer)
			return content, "", err
		}
		return nil
	})
	return raw, err
}

func (certKind) versions(ctx context.Context, vc *vaultClients, name string, add func(*bool, *time.Time, string)) error {
	return vc.certsFirst.do(ctx, func() error {
		return eachPage(ctx, vc.certs.NewListCertificatePropertiesVersionsPager(name, nil), func(page azcertificates.ListCertificatePropertiesVersionsResponse) {
			for _, it := range page.Value {
				if it == nil || it.ID == nil {
					continue
				}
				var a azcertificates.CertificateAttributes
				if it.Attributes != nil {
					a = *it.Attributes
				}
				add(a.Enabled, a.Created, it.ID.Version())
			}
		})
	})
}

// rawKey names one GET: Key Vault names and versions are case-insensitive.
type rawKey struct {
	typ           ObjectType
	name, version string
}

// rawCalls shares the GETs of one Fetch among the objects that name the
// same object version.
type rawCalls struct {
	mu    sync.Mutex
	calls map[rawKey]*rawCall
}

type rawCall struct {
	done chan struct{}
	raw  *rawObject
	err  error
}

// get returns the raw object for obj at version, fetching it once per
// Fetch; a caller whose ctx ends stops waiting.
func (r *rawCalls) get(ctx context.Context, s *session, obj *Object, version string) (*rawObject, error) {
	key := rawKey{typ: obj.Type, name: strings.ToLower(obj.Name), version: strings.ToLower(version)}
	r.mu.Lock()
	if r.calls == nil {
		r.calls = map[rawKey]*rawCall{}
	}
	c, ok := r.calls[key]
	if !ok {
		c = &rawCall{done: make(chan struct{})}
		r.calls[key] = c
	}
	r.mu.Unlock()
	if !ok {
		start := time.Now()
		c.raw, c.err = kindOf(obj.Type).get(ctx, s.vc, obj.Name, version)
		if c.err != nil {
			c.err = s.fail("fetch", obj, version, KindUnknown, c.err)
		}
		s.metrics.objectFetched(obj, c.err, time.Since(start))
		close(c.done)
	}
	select {
	case <-c.done:
		return c.raw, c.err
	case <-ctx.Done():
		return nil, s.fail("fetch", obj, version, KindUnknown, ctx.Err())
	}
}
