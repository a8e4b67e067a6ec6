package emulator

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	require.NoError(t, os.WriteFile(p, []byte(content), 0o600))
	return p
}

func TestLoadAndApplyConfig(t *testing.T) {
	dir := t.TempDir()
	key := newIssuerKeyRSA(t, "k1")
	writeFile(t, dir, "jwks.json", string(key.jwks))
	path := writeFile(t, dir, "emulator.yaml", `
applications:
- tenantId: `+idTenant+`
  clientId: `+idAppClient+`
  objectId: 44444444-4444-4444-8444-444444444444
  secret: `+idAppSecret+`
  federatedCredentials:
  - issuer: `+idIssuer+`
    subject: `+idSubject+`
managedIdentities:
- tenantId: `+idTenant+`
  clientId: 55555555-5555-4555-8555-555555555555
- tenantId: `+idTenant+`
  clientId: 66666666-6666-4666-8666-666666666666
  systemAssigned: true
trustedIssuers:
- issuer: `+idIssuer+`
  jwksFile: jwks.json
- issuer: https://inline.issuer.test
  jwks: `+string(key.jwks)+`
vaults:
- name: kv-one
  throttle: {limit: 50, window: 2s}
  secrets:
  - {name: db-password, value: v1}
  - {name: db-password, value: v2, contentType: text/plain, tags: {env: test}}
  keys:
  - {name: signing, type: EC, curve: P-256}
  certificates:
  - {name: tls, contentType: application/x-pem-file, dnsNames: [app.test]}
  grants:
  - {clientId: `+idAppClient+`, permissions: [secrets/get, keys/get, certificates/get]}
  - {objectId: 77777777-7777-4777-8777-777777777777}
- name: kv-gov
  cloud: AzureUSGovernmentCloud
`)
	cfg, err := LoadConfig(path)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "jwks.json"), cfg.TrustedIssuers[0].JWKSFile, "jwksFile is relative to the config file")
	assert.Equal(t, 2*time.Second, cfg.Vaults[0].Throttle.Window.Duration)
	require.Len(t, cfg.Vaults[0].Secrets, 2)

	e := idEmulator(t)
	require.NoError(t, e.ApplyConfig(cfg))

	p, ok := e.Principal(idAppClient)
	require.True(t, ok)
	assert.Equal(t, "44444444-4444-4444-8444-444444444444", p.ObjectID)
	assert.Equal(t, idAppSecret, p.Secret)
	require.Len(t, p.Federated, 1)
	assert.Equal(t, []string{DefaultFederatedAudience}, p.Federated[0].Audiences)
	assert.Equal(t, []string{"66666666-6666-4666-8666-666666666666", "55555555-5555-4555-8555-555555555555"}, e.AssignedIdentities())
	e.entra.mu.RLock()
	assert.Len(t, e.entra.issuers, 2)
	e.entra.mu.RUnlock()

	// The seeded vault exists with its contents: setting another version and
	// granting again work, and creating it again fails.
	v, err := e.SetSecret("kv-one", "db-password", "v3", SecretOptions{})
	require.NoError(t, err)
	assert.NotEmpty(t, v)
	assert.Error(t, e.CreateVault("kv-one", VaultOptions{}))
	assert.Error(t, e.CreateVault("kv-gov", VaultOptions{}))
}

func TestApplyConfigErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want string
	}{
		{"application without tenant", `applications: [{clientId: a}]`, "applications[0].tenantId: required"},
		{"application without client", `applications: [{tenantId: t}]`, "applications[0].clientId: required"},
		{"federated without subject", `applications: [{tenantId: t, clientId: a, federatedCredentials: [{issuer: i}]}]`, "applications[0].federatedCredentials[0].subject: required"},
		{"duplicate client", `applications: [{tenantId: t, clientId: a}, {tenantId: t, clientId: a}]`, "applications[1].clientId:"},
		{"identity without tenant", `managedIdentities: [{clientId: a}]`, "managedIdentities[0].tenantId: required"},
		{"issuer without keys", `trustedIssuers: [{issuer: https://x}]`, "trustedIssuers[0].jwks: required"},
		{"issuer with bad keys", `trustedIssuers: [{issuer: https://x, jwks: {keys: []}}]`, "trustedIssuers[0].jwks:"},
		{"issuer with missing file", `trustedIssuers: [{issuer: https://x, jwksFile: /nonexistent/jwks.json}]`, "trustedIssuers[0].jwksFile:"},
		{"vault without name", `vaults: [{secrets: []}]`, "vaults[0].name: required"},
		{"vault with bad name", `vaults: [{name: "-x"}]`, "vaults[0].name:"},
		{"secret without name", `vaults: [{name: kv1, secrets: [{value: v}]}]`, "vaults[0].secrets[0].name: required"},
		{"key without name", `vaults: [{name: kv1, keys: [{type: RSA}]}]`, "vaults[0].keys[0].name: required"},
		{"grant to unknown client", `vaults: [{name: kv1, grants: [{clientId: nobody}]}]`, "vaults[0].grants[0].clientId: no application"},
		{"grant to nobody", `vaults: [{name: kv1, grants: [{permissions: [secrets/get]}]}]`, "vaults[0].grants[0].objectId: required"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			path := writeFile(t, t.TempDir(), "c.yaml", tc.yaml)
			cfg, err := LoadConfig(path)
			require.NoError(t, err)
			e := idEmulator(t)
			err = e.ApplyConfig(cfg)
			require.Error(t, err)
			assert.True(t, strings.HasPrefix(err.Error(), tc.want), "error %q does not start with %q", err, tc.want)
		})
	}
}

func TestLoadConfigRejectsUnknownFields(t *testing.T) {
	path := writeFile(t, t.TempDir(), "c.yaml", "applications: [{tenantId: t, clientId: a, clientSecret: s}]\n")
	_, err := LoadConfig(path)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "clientSecret")

	path = writeFile(t, t.TempDir(), "c.yaml", "vaults: [{name: kv1, throttle: {limit: 1, window: 10}}]\n")
	_, err = LoadConfig(path)
	require.Error(t, err, "a window must be a duration string")

	_, err = LoadConfig(filepath.Join(t.TempDir(), "missing.yaml"))
	assert.Error(t, err)
}
