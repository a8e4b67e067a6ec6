package keyvault

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/test/emulator"
)

func TestFetchErrors(t *testing.T) {
	env := newFetchEnv(t)
	ctx := context.Background()
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID, "secrets/get", "certificates/get"))
	env.setSecret(t, "good", plantedValue, emulator.SecretOptions{})
	disabled := false
	env.setSecret(t, "off", plantedValue, emulator.SecretOptions{Enabled: &disabled})
	env.setSecret(t, "not-b64", plantedValue+"!", emulator.SecretOptions{})
	_, err := env.e.CreateKey(testVault, "k1", emulator.KeyOptions{})
	require.NoError(t, err)
	f := env.fetcher(Options{})

	cases := []struct {
		name    string
		objs    []Object
		kind    Kind
		status  int
		message string
	}{
		{"missing secret", []Object{{Name: "good", Type: TypeSecret}, {Name: "missing", Type: TypeSecret}},
			KindNotFound, http.StatusNotFound, "fetch secret kv-fetch/missing: Key Vault answered 404 (SecretNotFound)"},
		{"missing version", []Object{{Name: "good", Type: TypeSecret, Version: "0123456789abcdef0123456789abcdef"}},
			KindNotFound, http.StatusNotFound, "fetch secret kv-fetch/good@0123456789abcdef0123456789abcdef: Key Vault answered 404"},
		{"missing certificate", []Object{{Name: "nope", Type: TypeCert}},
			KindNotFound, http.StatusNotFound, "fetch cert kv-fetch/nope: Key Vault answered 404 (CertificateNotFound)"},
		{"no permission for keys", []Object{{Name: "good", Type: TypeSecret}, {Name: "k1", Type: TypeKey}},
			KindPermissionDenied, http.StatusForbidden, "fetch key kv-fetch/k1: Key Vault answered 403 (Forbidden)"},
		{"disabled secret", []Object{{Name: "off", Type: TypeSecret}},
			KindPermissionDenied, http.StatusForbidden, "fetch secret kv-fetch/off: Key Vault answered 403"},
		{"value that does not decode", []Object{{Name: "good", Type: TypeSecret}, {Name: "not-b64", Type: TypeSecret, Encoding: EncodingBase64}},
			KindConversion, 0, "convert secret kv-fetch/not-b64: secret not-b64: objectEncoding base64: the value is not valid base64"},
		{"bad object", []Object{{Name: "../etc", Type: TypeSecret}},
			KindInvalid, 0, `fetch from vault kv-fetch: object name "../etc"`},
		{"alias escaping the mount", []Object{{Name: "good", Type: TypeSecret, Alias: "../x"}},
			KindInvalid, 0, `file name "../x"`},
		{"two objects, one file", []Object{{Name: "good", Type: TypeSecret}, {Name: "off", Type: TypeSecret, Alias: "good"}},
			KindInvalid, 0, `file name "good" is used by another object`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			res, err := f.Fetch(ctx, env.request(t, tc.objs...))
			require.Error(t, err)
			assert.Nil(t, res, "all or nothing")
			assert.Equal(t, tc.kind, Classify(err), "kind of %v", err)
			assert.Contains(t, err.Error(), tc.message)
			assert.NotContains(t, err.Error(), plantedValue)
			assert.NotContains(t, err.Error(), plantedClientSecret)
			var re *azcore.ResponseError
			if tc.status != 0 {
				require.True(t, errors.As(err, &re), "the SDK's ResponseError is reachable")
				assert.Equal(t, tc.status, re.StatusCode)
			}
		})
	}
}

func TestFetchThrottledFailsFast(t *testing.T) {
	env := newFetchEnv(t)
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	env.setSecret(t, "s1", "v1", emulator.SecretOptions{})
	env.setSecret(t, "s2", "v2", emulator.SecretOptions{})
	f := env.fetcher(Options{})
	_, err := f.Fetch(context.Background(), env.request(t, Object{Name: "s1", Type: TypeSecret}))
	require.NoError(t, err)

	// One request a minute: the next answers 429 with a Retry-After far
	// beyond DefaultRetryOptions().MaxRetryDelay, so the SDK must not wait it out.
	require.NoError(t, env.e.SetThrottle(testVault, 1, time.Minute))
	env.e.ResetRequests()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	res, err := f.Fetch(ctx, env.request(t, Object{Name: "s1", Type: TypeSecret}, Object{Name: "s2", Type: TypeSecret}))
	require.Error(t, err)
	assert.Nil(t, res)
	assert.Less(t, time.Since(start), 10*time.Second, "a long Retry-After is not waited out")
	assert.Equal(t, KindThrottled, Classify(err))
	var re *azcore.ResponseError
	require.True(t, errors.As(err, &re))
	assert.Equal(t, http.StatusTooManyRequests, re.StatusCode)
	assert.Contains(t, err.Error(), "Key Vault answered 429 (Throttled)")
	assert.Equal(t, 1, env.kvCount(http.StatusTooManyRequests), "no retry against a Retry-After of a minute")
}

func TestFetchAuthenticationFailure(t *testing.T) {
	env := newFetchEnv(t)
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	env.setSecret(t, "s1", plantedValue, emulator.SecretOptions{})
	f := env.fetcher(Options{})
	wrong := env.app
	wrong.Secret = "wrong-" + plantedClientSecret
	_, err := f.Fetch(context.Background(), Request{VaultURL: env.vaultURL, Credential: env.credential(t, wrong), IdentityKey: "sp/wrong",
		Objects: []Object{{Name: "s1", Type: TypeSecret}}})
	require.Error(t, err)
	assert.Equal(t, KindAuthentication, Classify(err))
	var af *azidentity.AuthenticationFailedError
	assert.True(t, errors.As(err, &af))
	assert.Contains(t, err.Error(), "fetch secret kv-fetch/s1: ")
	assert.NotContains(t, err.Error(), plantedClientSecret)
	assert.NotContains(t, err.Error(), plantedValue)
}

func TestFetchContextBoundsEverything(t *testing.T) {
	env := newFetchEnv(t)
	require.NoError(t, env.e.Grant(testVault, env.app.ObjectID))
	env.setSecret(t, "s1", "v", emulator.SecretOptions{})
	// Every try is slow; the caller's deadline must end the call, retries
	// and all, and say so.
	slow := &inflight{base: env.hc.Transport, delay: 3 * time.Second}
	f := NewFetcher(Options{ClientOptions: azcore.ClientOptions{Transport: &http.Client{Transport: slow}}})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := f.Fetch(ctx, env.request(t, Object{Name: "s1", Type: TypeSecret}))
	require.Error(t, err)
	assert.Equal(t, KindCanceled, Classify(err))
	assert.True(t, errors.Is(err, context.DeadlineExceeded))
	assert.Less(t, time.Since(start), 3*time.Second)
}

func TestFetchBoundedClientCache(t *testing.T) {
	env := newFetchEnv(t)
	env.setSecret(t, "s1", "v", emulator.SecretOptions{})
	f := env.fetcher(Options{MaxClients: 2})
	for i, id := range []string{"44444444-2222-4333-8444-555555555551", "44444444-2222-4333-8444-555555555552", "44444444-2222-4333-8444-555555555553"} {
		p, err := env.e.AddApplication(emulator.Principal{TenantID: testTenant, ClientID: id, Secret: "s"})
		require.NoError(t, err)
		require.NoError(t, env.e.Grant(testVault, p.ObjectID, "secrets/get"))
		_, err = f.Fetch(context.Background(), Request{VaultURL: env.vaultURL, Credential: env.credential(t, p), IdentityKey: id, Objects: []Object{{Name: "s1", Type: TypeSecret}}})
		require.NoError(t, err, "identity %d", i)
		assert.LessOrEqual(t, f.clients.len(), 2)
	}
	// No identity key: nothing cached.
	_, err := f.Fetch(context.Background(), Request{VaultURL: env.vaultURL, Credential: env.credential(t, env.app), Objects: []Object{{Name: "s1", Type: TypeSecret}}})
	require.Error(t, err, "the app has no grant")
	assert.Equal(t, KindPermissionDenied, Classify(err))
	assert.Equal(t, 2, f.clients.len())
}
