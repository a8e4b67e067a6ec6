package spc

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/kvnode/kvnode/pkg/keyvault"
)

// objectsYAML builds an objects parameter the way manifests write it: an
// "array:" of block scalars, one per entry.
func objectsYAML(t testing.TB, entries ...string) string {
	t.Helper()
	var b strings.Builder
	b.WriteString("array:\n")
	for _, e := range entries {
		b.WriteString("  - |\n")
		for _, line := range strings.Split(strings.TrimSpace(e), "\n") {
			b.WriteString("    " + line + "\n")
		}
	}
	return b.String()
}

// validParams returns parameters that parse, with overrides applied; an
// override of "-" deletes the key.
func validParams(t testing.TB, overrides map[string]string) map[string]string {
	t.Helper()
	p := map[string]string{
		"keyvaultName": "kvname",
		"tenantId":     "tid",
		"objects":      objectsYAML(t, "objectName: secret1\nobjectType: secret"),
	}
	for k, v := range overrides {
		if v == "-" {
			delete(p, k)
			continue
		}
		p[k] = v
	}
	return p
}

// withObjects returns valid parameters whose objects are entries.
func withObjects(t testing.TB, entries ...string) map[string]string {
	t.Helper()
	return validParams(t, map[string]string{"objects": objectsYAML(t, entries...)})
}

// fieldErrors returns the messages of the FieldErrors in err.
func fieldErrors(t testing.TB, err error) []string {
	t.Helper()
	var verr *ValidationError
	require.ErrorAs(t, err, &verr)
	return messages(verr.Errors)
}

func messages(fes []*FieldError) []string {
	if len(fes) == 0 {
		return nil
	}
	msgs := make([]string, len(fes))
	for i, fe := range fes {
		msgs[i] = fe.Error()
	}
	return msgs
}

func writeFile(t testing.TB, content string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "env.json")
	require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
	return path
}

func publicCloud() Cloud {
	c, _ := CloudByName(AzurePublicCloud)
	return c
}

func TestParse(t *testing.T) {
	secret1 := keyvault.Object{Name: "secret1", Type: keyvault.TypeSecret}
	tests := []struct {
		name   string
		params map[string]string
		want   *Config
		mode   AuthMode
	}{
		{
			name:   "minimal service principal on the public cloud",
			params: validParams(t, nil),
			want:   &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), Objects: []keyvault.Object{secret1}},
			mode:   ServicePrincipal,
		},
		{
			name: "values are trimmed and kubelet's keys are ignored",
			params: validParams(t, map[string]string{
				"keyvaultName":                     "  kvname\n",
				"tenantId":                         " tid ",
				"usePodIdentity":                   " false ",
				"csi.storage.k8s.io/pod.name":      "web-0",
				"csi.storage.k8s.io/pod.namespace": "apps",
				"csi.storage.k8s.io/ephemeral":     "true",
				"secretProviderClass":              "azure-kvname",
			}),
			want: &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), Objects: []keyvault.Object{secret1}},
			mode: ServicePrincipal,
		},
		{
			name:   "tenantID wins over tenantId",
			params: validParams(t, map[string]string{"tenantId": "old", "tenantID": "new.onmicrosoft.com"}),
			want:   &Config{KeyVaultName: "kvname", TenantID: "new.onmicrosoft.com", Cloud: publicCloud(), Objects: []keyvault.Object{secret1}},
			mode:   ServicePrincipal,
		},
		{
			name:   "tenantID alone",
			params: validParams(t, map[string]string{"tenantId": "-", "tenantID": "72f988bf-86f1-41af-91ab-2d7cd011db47"}),
			want:   &Config{KeyVaultName: "kvname", TenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47", Cloud: publicCloud(), Objects: []keyvault.Object{secret1}},
			mode:   ServicePrincipal,
		},
		{
			name:   "workload identity",
			params: validParams(t, map[string]string{"clientID": "c1", "usePodIdentity": "false", "useVMManagedIdentity": "False"}),
			want:   &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), ClientID: "c1", Objects: []keyvault.Object{secret1}},
			mode:   WorkloadIdentity,
		},
		{
			name:   "pod identity with a boolean spelt 1",
			params: validParams(t, map[string]string{"usePodIdentity": "1"}),
			want:   &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), UsePodIdentity: true, Objects: []keyvault.Object{secret1}},
			mode:   PodIdentity,
		},
		{
			name:   "user-assigned VM managed identity with a boolean spelt TRUE",
			params: validParams(t, map[string]string{"useVMManagedIdentity": "TRUE", "userAssignedIdentityID": "u1"}),
			want:   &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), UseVMManagedIdentity: true, UserAssignedIdentityID: "u1", Objects: []keyvault.Object{secret1}},
			mode:   VMManagedIdentity,
		},
		{
			name: "every object field",
			params: withObjects(t, `
objectName: web-tls
objectType: secret
objectAlias: tls/web.pfx
objectFormat: PFX
objectEncoding: Base64
filePermission: "0440"
objectVersion: 0f1e2d3c4b5a69788796a5b4c3d2e1f0
objectVersionHistory: 1`),
			want: &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), Objects: []keyvault.Object{{
				Name: "web-tls", Type: keyvault.TypeSecret, Alias: "tls/web.pfx", Format: keyvault.FormatPFX,
				Encoding: keyvault.EncodingBase64, FileMode: 0o440, Version: "0f1e2d3c4b5a69788796a5b4c3d2e1f0", VersionHistory: 1,
			}}},
			mode: ServicePrincipal,
		},
		{
			name: "keys, certs, pem, utf-8, unquoted octal permission, latest",
			params: withObjects(t,
				"objectName: key1\nobjectType: key\nobjectFormat: pem\nfilePermission: 0600",
				"objectName: cert1\nobjectType: cert\nobjectVersion: latest",
				"objectName: s\nobjectType: secret\nobjectEncoding: UTF-8\nfilePermission: 644",
			),
			want: &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), Objects: []keyvault.Object{
				{Name: "key1", Type: keyvault.TypeKey, Format: keyvault.FormatPEM, FileMode: 0o600},
				{Name: "cert1", Type: keyvault.TypeCert},
				{Name: "s", Type: keyvault.TypeSecret, Encoding: keyvault.EncodingUTF8, FileMode: 0o644},
			}},
			mode: ServicePrincipal,
		},
		{
			name: "version history, quoted or not, up to the maximum, with latest",
			params: withObjects(t,
				"objectName: a\nobjectType: secret\nobjectVersionHistory: 20",
				"objectName: b\nobjectType: key\nobjectVersionHistory: \"3\"\nobjectVersion: latest",
				"objectName: c\nobjectType: cert\nobjectVersionHistory: 0",
			),
			want: &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), Objects: []keyvault.Object{
				{Name: "a", Type: keyvault.TypeSecret, VersionHistory: 20},
				{Name: "b", Type: keyvault.TypeKey, VersionHistory: 3},
				{Name: "c", Type: keyvault.TypeCert},
			}},
			mode: ServicePrincipal,
		},
		{
			name: "files sharing directories, the same object under two names, null values",
			params: withObjects(t,
				"objectName: s\nobjectType: secret\nobjectAlias: conf/a/one",
				"objectName: s\nobjectType: secret\nobjectAlias: conf/a/two\nobjectVersion:",
				"objectName: s\nobjectType: secret\nobjectAlias: conf/b\nobjectFormat: ~",
				"objectName: conf-a\nobjectType: secret\nobjectAlias: \"  conf.d/x..y  \"",
			),
			want: &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), Objects: []keyvault.Object{
				{Name: "s", Type: keyvault.TypeSecret, Alias: "conf/a/one"},
				{Name: "s", Type: keyvault.TypeSecret, Alias: "conf/a/two"},
				{Name: "s", Type: keyvault.TypeSecret, Alias: "conf/b"},
				{Name: "conf-a", Type: keyvault.TypeSecret, Alias: "conf.d/x..y"},
			}},
			mode: ServicePrincipal,
		},
		{
			name: "objects YAML with comments, anchors and flow style",
			params: validParams(t, map[string]string{"objects": `
# leading comment
array: ["objectName: a\nobjectType: secret # a comment", &second "objectName: b\nobjectType: key"]
other: *second
`}),
			want: &Config{KeyVaultName: "kvname", TenantID: "tid", Cloud: publicCloud(), Objects: []keyvault.Object{
				{Name: "a", Type: keyvault.TypeSecret},
				{Name: "b", Type: keyvault.TypeKey},
			}},
			mode: ServicePrincipal,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Parse(tc.params)
			require.NoError(t, err)
			assert.Equal(t, tc.want, got)
			assert.Equal(t, tc.mode, got.AuthMode())
		})
	}
}

func TestParseClouds(t *testing.T) {
	stackFixture, err := filepath.Abs("testdata/azurestack.json")
	require.NoError(t, err)
	stackFile := writeFile(t, `{"name":"AzureStackCloud","activeDirectoryEndpoint":"https://adfs.local.azurestack.external/adfs",
		"keyVaultEndpoint":"https://vault.local.azurestack.external/","keyVaultDNSSuffix":"vault.local.azurestack.external"}`)
	tests := []struct {
		cloudName, envFile string
		want               Cloud
		vaultURL           string
	}{
		{"", "", publicCloud(), "https://kvname.vault.azure.net/"},
		{"AzurePublicCloud", "/ignored/for/public.json", publicCloud(), "https://kvname.vault.azure.net/"},
		{"AzureCloud", "", publicCloud(), "https://kvname.vault.azure.net/"},
		{"azureusgovernmentcloud", "", Cloud{Name: "AzureUSGovernmentCloud", KeyVaultDNSSuffix: "vault.usgovcloudapi.net",
			KeyVaultResource: "https://vault.usgovcloudapi.net", ActiveDirectoryEndpoint: "https://login.microsoftonline.us/"},
			"https://kvname.vault.usgovcloudapi.net/"},
		{"AzureUSGovernment", "", Cloud{Name: "AzureUSGovernmentCloud", KeyVaultDNSSuffix: "vault.usgovcloudapi.net",
			KeyVaultResource: "https://vault.usgovcloudapi.net", ActiveDirectoryEndpoint: "https://login.microsoftonline.us/"},
			"https://kvname.vault.usgovcloudapi.net/"},
		{"AZURECHINACLOUD", "", Cloud{Name: "AzureChinaCloud", KeyVaultDNSSuffix: "vault.azure.cn",
			KeyVaultResource: "https://vault.azure.cn", ActiveDirectoryEndpoint: "https://login.chinacloudapi.cn/"},
			"https://kvname.vault.azure.cn/"},
		{"AzureStackCloud", stackFixture, Cloud{Name: "AzureStackCloud", KeyVaultDNSSuffix: "vault.local.azurestack.external",
			KeyVaultResource: "https://vault.local.azurestack.external", ActiveDirectoryEndpoint: "https://login.microsoftonline.com/"},
			"https://kvname.vault.local.azurestack.external/"},
		{"azurestackcloud", stackFile, Cloud{Name: "AzureStackCloud", KeyVaultDNSSuffix: "vault.local.azurestack.external",
			KeyVaultResource: "https://vault.local.azurestack.external", ActiveDirectoryEndpoint: "https://adfs.local.azurestack.external/adfs/"},
			"https://kvname.vault.local.azurestack.external/"},
	}
	for _, tc := range tests {
		t.Run(tc.cloudName+"|"+filepath.Base(tc.envFile), func(t *testing.T) {
			cfg, err := Parse(validParams(t, map[string]string{"cloudName": tc.cloudName, "cloudEnvFileName": tc.envFile}))
			require.NoError(t, err)
			assert.Equal(t, tc.want, cfg.Cloud)
			assert.Equal(t, tc.vaultURL, cfg.VaultURL())
			assert.Equal(t, tc.envFile, cfg.CloudEnvFileName)
		})
	}
}

func TestParseErrors(t *testing.T) {
	badJSON := writeFile(t, "{")
	noSuffix := writeFile(t, `{"activeDirectoryEndpoint":"https://login.microsoftonline.com/","keyVaultEndpoint":"https://vault.x/"}`)
	noAuthority := writeFile(t, `{"keyVaultDNSSuffix":"vault.x","keyVaultEndpoint":"https://vault.x/"}`)
	envDir := t.TempDir()
	fifo := filepath.Join(t.TempDir(), "fifo.json")
	require.NoError(t, syscall.Mkfifo(fifo, 0o600))
	huge := writeFile(t, strings.Repeat(" ", 1<<20+1))
	noResource := writeFile(t, `{"keyVaultDNSSuffix":"vault.x","activeDirectoryEndpoint":"https://login.microsoftonline.com/"}`)
	secret := func(extra string) string { return "objectName: s\nobjectType: secret\n" + extra }

	// warn marks the messages that follow as warnings: the upstream
	// provider tolerates them, Parse succeeds and lists them.
	const warn = "\x00warn"
	tests := []struct {
		name   string
		params map[string]string
		want   []string
	}{
		// keyvaultName
		{"keyvaultName missing", validParams(t, map[string]string{"keyvaultName": "-"}),
			[]string{`keyvaultName: must be set`}},
		{"keyvaultName blank", validParams(t, map[string]string{"keyvaultName": "   "}),
			[]string{`keyvaultName: must be set`}},
		{"keyvaultName too short", validParams(t, map[string]string{"keyvaultName": "kv"}),
			[]string{`keyvaultName: "kv" must be 3-24 characters long`}},
		{"keyvaultName too long", validParams(t, map[string]string{"keyvaultName": "a234567890123456789012345"}),
			[]string{`keyvaultName: "a234567890123456789012345" must be 3-24 characters long`}},
		{"keyvaultName underscore", validParams(t, map[string]string{"keyvaultName": "my_vault"}),
			[]string{`keyvaultName: "my_vault" may contain only letters, digits and hyphens`}},
		{"keyvaultName URL", validParams(t, map[string]string{"keyvaultName": "kv.vault.azure.net"}),
			[]string{`keyvaultName: "kv.vault.azure.net" may contain only letters, digits and hyphens`}},
		{"keyvaultName starts with a digit", validParams(t, map[string]string{"keyvaultName": "1vault"}),
			[]string{warn, `keyvaultName: "1vault" must start with a letter; no Key Vault can have this name`}},
		{"keyvaultName starts with a hyphen", validParams(t, map[string]string{"keyvaultName": "-vault"}),
			[]string{warn, `keyvaultName: "-vault" must start with a letter; no Key Vault can have this name`}},
		{"keyvaultName ends with a hyphen", validParams(t, map[string]string{"keyvaultName": "vault-"}),
			[]string{warn, `keyvaultName: "vault-" must end with a letter or digit; no Key Vault can have this name`}},
		{"keyvaultName consecutive hyphens", validParams(t, map[string]string{"keyvaultName": "my--vault"}),
			[]string{warn, `keyvaultName: "my--vault" must not contain consecutive hyphens; no Key Vault can have this name`}},

		// tenant
		{"tenant missing", validParams(t, map[string]string{"tenantId": "-"}),
			[]string{`tenantId: must be set (as tenantId or tenantID)`}},
		{"tenantID with a slash", validParams(t, map[string]string{"tenantID": "t/../other"}),
			[]string{`tenantID: "t/../other" must be a tenant ID (GUID) or a domain name`}},
		{"tenantId with a query", validParams(t, map[string]string{"tenantId": "t?x=1"}),
			[]string{`tenantId: "t?x=1" must be a tenant ID (GUID) or a domain name`}},

		// cloud
		{"cloudName unknown", validParams(t, map[string]string{"cloudName": "AzureMars"}),
			[]string{`cloudName: "AzureMars" is not one of AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, AzureStackCloud`}},
		{"cloudName retired German cloud", validParams(t, map[string]string{"cloudName": "AzureGermanCloud"}),
			[]string{`cloudName: "AzureGermanCloud" is not one of AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud, AzureStackCloud`}},
		{"AzureStackCloud without cloudEnvFileName", validParams(t, map[string]string{"cloudName": "AzureStackCloud"}),
			[]string{`cloudEnvFileName: must be set when cloudName is AzureStackCloud`}},
		{"cloudEnvFileName relative", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": "stack.json"}),
			[]string{`cloudEnvFileName: "stack.json" must be an absolute path`}},
		{"cloudEnvFileName missing", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": "/nonexistent/stack.json"}),
			[]string{`cloudEnvFileName: cannot read "/nonexistent/stack.json": open /nonexistent/stack.json: no such file or directory`}},
		{"cloudEnvFileName not JSON", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": badJSON}),
			[]string{`cloudEnvFileName: "` + badJSON + `" is not an Azure environment JSON file`}},
		{"cloudEnvFileName a directory", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": envDir}),
			[]string{`cloudEnvFileName: "` + envDir + `" is not a regular file`}},
		{"cloudEnvFileName a FIFO", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": fifo}),
			[]string{`cloudEnvFileName: "` + fifo + `" is not a regular file`}},
		{"cloudEnvFileName too large", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": huge}),
			[]string{`cloudEnvFileName: "` + huge + `" is larger than 1048576 bytes`}},
		{"cloudEnvFileName without keyVaultDNSSuffix", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": noSuffix}),
			[]string{`cloudEnvFileName: "` + noSuffix + `" has no keyVaultDNSSuffix`}},
		{"cloudEnvFileName without authority", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": noAuthority}),
			[]string{`cloudEnvFileName: "` + noAuthority + `" has no https activeDirectoryEndpoint`}},
		{"cloudEnvFileName without Key Vault resource", validParams(t, map[string]string{"cloudName": "AzureStackCloud", "cloudEnvFileName": noResource}),
			[]string{`cloudEnvFileName: "` + noResource + `" has neither resourceIdentifiers.keyVault nor keyVaultEndpoint`}},

		// identity
		{"usePodIdentity not a boolean", validParams(t, map[string]string{"usePodIdentity": "yes"}),
			[]string{`usePodIdentity: "yes" is not a boolean (use "true" or "false")`}},
		{"useVMManagedIdentity not a boolean", validParams(t, map[string]string{"useVMManagedIdentity": "enabled"}),
			[]string{`useVMManagedIdentity: "enabled" is not a boolean (use "true" or "false")`}},
		{"usePodServiceAccountAnnotation not a boolean", validParams(t, map[string]string{"usePodServiceAccountAnnotation": "on"}),
			[]string{warn, `usePodServiceAccountAnnotation: is no longer read by the Azure provider; ignored (set clientID to the workload identity's client ID)`}},
		{"usePodServiceAccountAnnotation unsupported", validParams(t, map[string]string{"usePodServiceAccountAnnotation": "true"}),
			[]string{warn, `usePodServiceAccountAnnotation: is no longer read by the Azure provider; ignored (set clientID to the workload identity's client ID)`}},
		{"pod identity and VM managed identity", validParams(t, map[string]string{"usePodIdentity": "true", "useVMManagedIdentity": "true"}),
			[]string{`usePodIdentity: usePodIdentity, useVMManagedIdentity and useAzureTokenProxy are exclusive; choose one identity`}},
		{"workload identity and pod identity", validParams(t, map[string]string{"usePodIdentity": "true", "clientID": "c1"}),
			[]string{warn, `clientID: is ignored with usePodIdentity, as the upstream provider ignores it (clientID names a workload identity)`}},
		{"workload identity and VM managed identity", validParams(t, map[string]string{"useVMManagedIdentity": "true", "clientID": "c1"}),
			[]string{warn, `clientID: is ignored with useVMManagedIdentity, as the upstream provider ignores it (clientID names a workload identity)`}},
		{"userAssignedIdentityID without VM managed identity", validParams(t, map[string]string{"userAssignedIdentityID": "u1"}),
			[]string{warn, `userAssignedIdentityID: is ignored without useVMManagedIdentity "true", as the upstream provider ignores it`}},
		{"userAssignedIdentityID with pod identity", validParams(t, map[string]string{"userAssignedIdentityID": "u1", "usePodIdentity": "true"}),
			[]string{warn, `userAssignedIdentityID: is ignored without useVMManagedIdentity "true", as the upstream provider ignores it`}},
		{"userAssignedIdentityID with workload identity", validParams(t, map[string]string{"userAssignedIdentityID": "u1", "clientID": "c1"}),
			[]string{warn, `userAssignedIdentityID: is ignored without useVMManagedIdentity "true", as the upstream provider ignores it`}},
		{"identity binding and pod identity", validParams(t, map[string]string{"useAzureTokenProxy": "true", "usePodIdentity": "true", "clientID": "c1"}),
			[]string{`usePodIdentity: usePodIdentity, useVMManagedIdentity and useAzureTokenProxy are exclusive; choose one identity`}},
		{"identity binding without clientID", validParams(t, map[string]string{"useAzureTokenProxy": "true"}),
			[]string{`clientID: must be set with useAzureTokenProxy: the managed identity's client ID`}},
		{"useAzureTokenProxy not a boolean", validParams(t, map[string]string{"useAzureTokenProxy": "sure", "clientID": "c1"}),
			[]string{`useAzureTokenProxy: "sure" is not a boolean (use "true" or "false")`}},

		// parameter names
		{"unknown parameter", validParams(t, map[string]string{"vaultSku": "premium"}),
			[]string{warn, `vaultSku: is not a parameter of the Azure provider; ignored`}},
		{"parameter in the wrong case", validParams(t, map[string]string{"clientId": "c1"}),
			[]string{warn, `clientId: is not a parameter of the Azure provider; ignored (parameter names are case-sensitive: clientID)`}},
		{"retired resourceGroup", validParams(t, map[string]string{"resourceGroup": "rg", "subscriptionId": "sub"}),
			[]string{warn, `resourceGroup: is no longer read by the Azure provider; ignored (the vault URL comes from keyvaultName and cloudName)`,
				`subscriptionId: is no longer read by the Azure provider; ignored (the vault URL comes from keyvaultName and cloudName)`}},

		// the objects document
		{"objects missing", validParams(t, map[string]string{"objects": "-"}),
			[]string{`objects: must be set`}},
		{"objects not YAML", validParams(t, map[string]string{"objects": "array: [\"a\""}),
			[]string{`objects: is not valid YAML: yaml: line 1: did not find expected ',' or ']'`}},
		{"objects a list", validParams(t, map[string]string{"objects": "- objectName: a"}),
			[]string{`objects: must be a YAML mapping with an "array" list`}},
		{"objects without array", validParams(t, map[string]string{"objects": "arrray:\n  - |\n    objectName: a"}),
			[]string{warn, `objects.array: lists no object: the volume is mounted empty`}},
		{"objects empty array", validParams(t, map[string]string{"objects": "array: []"}),
			[]string{warn, `objects.array: lists no object: the volume is mounted empty`}},
		{"objects null array", validParams(t, map[string]string{"objects": "array:"}),
			[]string{warn, `objects.array: lists no object: the volume is mounted empty`}},
		{"objects array not a list", validParams(t, map[string]string{"objects": "array: secret1"}),
			[]string{`objects.array: must be a list of YAML strings, one per object`}},
		{"entry written as a mapping", validParams(t, map[string]string{"objects": "array:\n  - objectName: a\n    objectType: secret"}),
			[]string{`objects[0]: must be a YAML string holding the object's fields (start the entry with "- |")`}},
		{"entry empty", validParams(t, map[string]string{"objects": "array:\n  - \"\"\n  -"}),
			[]string{`objects[0]: is empty`, `objects[1]: is empty`}},
		{"entry not YAML", withObjects(t, "objectName: [a"),
			[]string{`objects[0]: is not valid YAML: yaml: line 1: did not find expected ',' or ']'`}},
		{"entry not a mapping", withObjects(t, "just some text"),
			[]string{`objects[0]: must be a mapping of object fields (objectName, objectType, ...)`}},

		// object fields
		{"objectName missing", withObjects(t, "objectType: secret"),
			[]string{`objects[0].objectName: must be set`}},
		{"objectName invalid", withObjects(t, "objectName: my_secret\nobjectType: secret"),
			[]string{`objects[0].objectName: "my_secret" must be 1-127 letters, digits and hyphens`}},
		{"objectName too long", withObjects(t, "objectName: "+strings.Repeat("a", 128)+"\nobjectType: secret"),
			[]string{`objects[0].objectName: "` + strings.Repeat("a", 128) + `" must be 1-127 letters, digits and hyphens`}},
		{"objectType missing", withObjects(t, "objectName: s"),
			[]string{`objects[0].objectType: must be set to secret, key or cert`}},
		{"objectType in upper case", withObjects(t, "objectName: s\nobjectType: Secret"),
			[]string{`objects[0].objectType: "Secret" is not one of secret, key, cert`}},
		{"objectType certificate", withObjects(t, "objectName: s\nobjectType: certificate"),
			[]string{`objects[0].objectType: "certificate" is not one of secret, key, cert`}},
		{"unknown field", withObjects(t, secret("objectAlais: db")),
			[]string{warn, `objects[0].objectAlais: is not an object field; ignored, as the upstream provider ignores it (did you mean objectAlias?)`}},
		{"filePermission misspelt", withObjects(t, secret("filePermision: \"0600\"")),
			[]string{warn, `objects[0].filePermision: is not an object field; ignored, as the upstream provider ignores it (did you mean filePermission?)`}},
		{"field in the wrong case", withObjects(t, "objectname: s\nobjectType: secret"),
			[]string{`objects[0].objectName: must be set`,
				warn, `objects[0].objectname: is not an object field; ignored, as the upstream provider ignores it (did you mean objectName?)`}},
		{"objectNotAfter", withObjects(t, secret("objectNotAfter: 2026-06-05T19:41:00Z")),
			[]string{warn, `objects[0].objectNotAfter: is not supported by kvnode; ignored`}},
		{"field set twice", withObjects(t, secret("objectAlias: a\nobjectAlias: b")),
			[]string{`objects[0].objectAlias: is set twice`}},
		{"field given a list", withObjects(t, secret("objectAlias: [a, b]")),
			[]string{`objects[0].objectAlias: must be a single value, not a list or mapping`}},
		{"objectVersion with a slash", withObjects(t, secret("objectVersion: abc/def")),
			[]string{`objects[0].objectVersion: "abc/def" must contain only letters and digits`}},
		{"objectVersionHistory not an integer", withObjects(t, secret("objectVersionHistory: three")),
			[]string{`objects[0].objectVersionHistory: "three" is not an integer`}},
		{"objectVersionHistory fractional", withObjects(t, secret("objectVersionHistory: 2.5")),
			[]string{`objects[0].objectVersionHistory: "2.5" is not an integer`}},
		{"objectVersionHistory negative", withObjects(t, secret("objectVersionHistory: -1")),
			[]string{warn, `objects[0].objectVersionHistory: -1 is negative; read as 1 (the one version named by objectVersion), as the upstream provider reads it`}},
		{"objectVersionHistory large", withObjects(t, secret("objectVersionHistory: 21")),
			[]string{warn, `objects[0].objectVersionHistory: 21 versions cost 22 Key Vault requests per pod per rotation; 20 cover common rotation schemes`}},
		{"objectVersionHistory overflows", withObjects(t, secret("objectVersionHistory: 99999999999999999999")),
			[]string{`objects[0].objectVersionHistory: 99999999999999999999 is out of range`}},
		{"objectVersionHistory underflows", withObjects(t, secret("objectVersionHistory: -99999999999999999999")),
			[]string{`objects[0].objectVersionHistory: -99999999999999999999 is out of range`}},
		{"objectFormat unknown", withObjects(t, secret("objectFormat: der")),
			[]string{`objects[0].objectFormat: "der" is not one of pem, pfx`}},
		{"objectFormat pfx on a cert", withObjects(t, "objectName: c\nobjectType: cert\nobjectFormat: pfx"),
			[]string{`objects[0].objectFormat: pfx applies only to objectType secret`}},
		{"objectFormat PFX on a key", withObjects(t, "objectName: k\nobjectType: key\nobjectFormat: PFX"),
			[]string{warn, `objects[0].objectFormat: "PFX" applies only to objectType secret; ignored for objectType key, as the upstream provider ignores it`}},
		{"objectEncoding unknown", withObjects(t, secret("objectEncoding: base32")),
			[]string{`objects[0].objectEncoding: "base32" is not one of utf-8, hex, base64`}},
		{"objectEncoding utf8 without hyphen", withObjects(t, secret("objectEncoding: utf8")),
			[]string{`objects[0].objectEncoding: "utf8" is not one of utf-8, hex, base64`}},
		{"objectEncoding on a cert", withObjects(t, "objectName: c\nobjectType: cert\nobjectEncoding: base64"),
			[]string{`objects[0].objectEncoding: applies only to objectType secret`}},
		{"objectEncoding utf-8 on a key", withObjects(t, "objectName: k\nobjectType: key\nobjectEncoding: utf-8"),
			[]string{`objects[0].objectEncoding: applies only to objectType secret`}},
		{"filePermission not octal", withObjects(t, secret("filePermission: \"0999\"")),
			[]string{`objects[0].filePermission: "0999" is not an octal number such as "0600" (the upstream provider would write the file with mode 0)`}},
		{"filePermission symbolic", withObjects(t, secret("filePermission: rw-r--r--")),
			[]string{`objects[0].filePermission: "rw-r--r--" is not an octal number such as "0600" (the upstream provider would write the file with mode 0)`}},
		{"filePermission with setuid", withObjects(t, secret("filePermission: \"4755\"")),
			[]string{`objects[0].filePermission: "4755" must be at most 0777: setuid, setgid and sticky bits are refused`}},
		{"filePermission zero", withObjects(t, secret("filePermission: \"0000\"")),
			[]string{`objects[0].filePermission: "0000" gives the file no permissions; use at least 0400`}},

		// file names
		{"alias absolute", withObjects(t, secret("objectAlias: /etc/passwd")),
			[]string{`objects[0].objectAlias: "/etc/passwd" must be a relative path inside the mount`}},
		{"alias climbs out", withObjects(t,
			"objectName: a\nobjectType: secret", "objectName: b\nobjectType: secret", "objectName: c\nobjectType: secret\nobjectAlias: ../x"),
			[]string{`objects[2].objectAlias: "../x" must be a relative path inside the mount`}},
		{"alias climbs out deeper", withObjects(t, secret("objectAlias: a/../../b")),
			[]string{`objects[0].objectAlias: "a/../../b" must be a relative path inside the mount`}},
		{"alias is ..", withObjects(t, secret("objectAlias: \"..\"")),
			[]string{`objects[0].objectAlias: ".." must be a relative path inside the mount`}},
		{"alias with an empty segment", withObjects(t, secret("objectAlias: a//b")),
			[]string{warn, `objects[0].objectAlias: "a//b" has empty or "." path segments; written as "a/b"`}},
		{"alias ending in a slash", withObjects(t, secret("objectAlias: dir/")),
			[]string{warn, `objects[0].objectAlias: "dir/" has empty or "." path segments; written as "dir"`}},
		{"alias with a dot segment", withObjects(t, secret("objectAlias: ./a")),
			[]string{warn, `objects[0].objectAlias: "./a" has empty or "." path segments; written as "a"`}},
		{"alias the mount itself", withObjects(t, secret("objectAlias: ./")),
			[]string{`objects[0].objectAlias: "./" names the mount itself, not a file in it`}},
		{"alias ..data", withObjects(t, secret("objectAlias: ..data")),
			[]string{`objects[0].objectAlias: "..data" must not have a path segment starting with ".." (reserved by the atomic writer)`}},
		{"alias with a nested ..segment", withObjects(t, secret("objectAlias: a/..b")),
			[]string{`objects[0].objectAlias: "a/..b" must not have a path segment starting with ".." (reserved by the atomic writer)`}},
		{"alias with NUL", withObjects(t, secret(`objectAlias: "a\0b"`)),
			[]string{`objects[0].objectAlias: "a\x00b" must not contain control characters`}},
		{"alias with a newline", withObjects(t, secret(`objectAlias: "a\nb"`)),
			[]string{`objects[0].objectAlias: "a\nb" must not contain control characters`}},
		{"alias segment too long", withObjects(t, secret("objectAlias: d/"+strings.Repeat("x", 256))),
			[]string{`objects[0].objectAlias: "d/` + strings.Repeat("x", 256) + `" has a path segment longer than 255 bytes`}},

		// collisions
		{"same object twice", withObjects(t, "objectName: s\nobjectType: secret", "objectName: s\nobjectType: cert"),
			[]string{warn, `objects[0].objectName: "s" is also written by objects[1], which wins, as with the upstream provider; this object is not mounted`}},
		{"alias equal to another object's name", withObjects(t, "objectName: s\nobjectType: secret", "objectName: t\nobjectType: secret\nobjectAlias: s"),
			[]string{warn, `objects[0].objectName: "s" is also written by objects[1], which wins, as with the upstream provider; this object is not mounted`}},
		{"file then a file below it", withObjects(t, "objectName: a\nobjectType: secret", "objectName: t\nobjectType: secret\nobjectAlias: a/b"),
			[]string{`objects[1].objectAlias: "a/b" needs "a" to be a directory, but objects[0] writes a file there`}},
		{"file below then the file", withObjects(t, "objectName: t\nobjectType: secret\nobjectAlias: a/b/c", "objectName: a\nobjectType: secret\nobjectAlias: a/b"),
			[]string{`objects[1].objectAlias: "a/b" is needed as a directory for "a/b/c" of objects[0]`}},
		{"version history then a file inside it", withObjects(t, "objectName: a\nobjectType: secret\nobjectVersionHistory: 3", "objectName: t\nobjectType: secret\nobjectAlias: a/0"),
			[]string{`objects[1].objectAlias: "a/0" is inside the version-history directory "a" of objects[0]`}},
		{"file then a version history around it", withObjects(t, "objectName: t\nobjectType: secret\nobjectAlias: h/x", "objectName: s\nobjectType: secret\nobjectAlias: h\nobjectVersionHistory: 2"),
			[]string{`objects[1].objectAlias: version-history directory "h" would also hold "h/x" of objects[0]`}},
		{"two version histories in one directory", withObjects(t, "objectName: s\nobjectType: secret\nobjectVersionHistory: 2", "objectName: s\nobjectType: key\nobjectVersionHistory: 5"),
			[]string{warn, `objects[0].objectName: "s" is also written by objects[1], which wins, as with the upstream provider; this object is not mounted`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			errs, warns := tc.want, []string(nil)
			if i := slices.Index(tc.want, warn); i >= 0 {
				errs, warns = tc.want[:i], tc.want[i+1:]
			}
			cfg, err := Parse(tc.params)
			if len(errs) == 0 {
				require.NoError(t, err)
				assert.Equal(t, warns, messages(cfg.Warnings))
				return
			}
			require.Error(t, err)
			assert.Nil(t, cfg)
			assert.Equal(t, errs, fieldErrors(t, err))
			var verr *ValidationError
			require.ErrorAs(t, err, &verr)
			assert.Equal(t, warns, messages(verr.Warnings), "warnings reported next to the errors")
		})
	}
}

func TestParseReportsEveryProblem(t *testing.T) {
	_, err := Parse(map[string]string{
		"keyvaultName":   "kv_1",
		"usePodIdentity": "maybe",
		"objects": objectsYAML(t,
			"objectName: a\nobjectType: secret",
			"objectName: b\nobjectType: blob\nobjectAlias: ../b",
			"objectName: a\nobjectType: key",
		),
	})
	require.Error(t, err)
	assert.Equal(t, []string{
		`keyvaultName: "kv_1" may contain only letters, digits and hyphens`,
		`tenantId: must be set (as tenantId or tenantID)`,
		`usePodIdentity: "maybe" is not a boolean (use "true" or "false")`,
		`objects[1].objectType: "blob" is not one of secret, key, cert`,
		`objects[1].objectAlias: "../b" must be a relative path inside the mount`,
	}, fieldErrors(t, err))
	assert.Equal(t, `invalid SecretProviderClass parameters: keyvaultName: "kv_1" may contain only letters, digits and hyphens; `+
		`tenantId: must be set (as tenantId or tenantID); usePodIdentity: "maybe" is not a boolean (use "true" or "false"); `+
		`objects[1].objectType: "blob" is not one of secret, key, cert; objects[1].objectAlias: "../b" must be a relative path inside the mount; `+
		`also: objects[0].objectName: "a" is also written by objects[2], which wins, as with the upstream provider; this object is not mounted`, err.Error())

	var fe *FieldError
	require.ErrorAs(t, err, &fe)
	assert.Equal(t, "keyvaultName", fe.Field)
	assert.Equal(t, `"kv_1" may contain only letters, digits and hyphens`, fe.Detail)
}

// loadManifest reads a SecretProviderClass fixture.
func loadManifest(t testing.TB, name string) *SecretProviderClass {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", name))
	require.NoError(t, err)
	var spc SecretProviderClass
	require.NoError(t, yaml.UnmarshalStrict(data, &spc))
	return &spc
}

func TestParseUpstreamStyleManifests(t *testing.T) {
	t.Run("service principal", func(t *testing.T) {
		spc := loadManifest(t, "azure-service-principal.yaml")
		require.Equal(t, Provider("azure"), spc.Spec.Provider)
		cfg, err := Parse(spc.Spec.Parameters)
		require.NoError(t, err)
		assert.Equal(t, &Config{
			KeyVaultName: "kvname",
			TenantID:     "tid",
			Cloud:        publicCloud(),
			Objects: []keyvault.Object{
				{Name: "secret1", Type: keyvault.TypeSecret},
				{Name: "key1", Type: keyvault.TypeKey, Alias: "KEY_ALIAS"},
				{Name: "cert1", Type: keyvault.TypeCert},
				{Name: "cert1", Type: keyvault.TypeSecret, Alias: "cert1-bundle.pem"},
			},
		}, cfg)
		assert.Equal(t, ServicePrincipal, cfg.AuthMode())
		assert.Equal(t, "https://kvname.vault.azure.net/", cfg.VaultURL())
		var names []string
		for _, o := range cfg.Objects {
			names = append(names, o.FileName())
		}
		assert.Equal(t, []string{"secret1", "KEY_ALIAS", "cert1", "cert1-bundle.pem"}, names)
	})
	t.Run("workload identity", func(t *testing.T) {
		spc := loadManifest(t, "azure-workload-identity.yaml")
		cfg, err := Parse(spc.Spec.Parameters)
		require.NoError(t, err)
		assert.Equal(t, WorkloadIdentity, cfg.AuthMode())
		assert.Equal(t, "0b5b5a4e-2c4f-4d3b-9d6e-3f2a1b0c9d8e", cfg.ClientID)
		assert.Equal(t, "72f988bf-86f1-41af-91ab-2d7cd011db47", cfg.TenantID)
		assert.Equal(t, "https://contoso-kv-01.vault.usgovcloudapi.net/", cfg.VaultURL())
		assert.Equal(t, "https://login.microsoftonline.us/", cfg.Cloud.ActiveDirectoryEndpoint)
		assert.Equal(t, []keyvault.Object{
			{Name: "db-password", Type: keyvault.TypeSecret, Alias: "db/password", FileMode: 0o600},
			{Name: "signing-key", Type: keyvault.TypeSecret, Alias: "db/signing.key", Encoding: keyvault.EncodingBase64},
			{Name: "api-token", Type: keyvault.TypeSecret, VersionHistory: 3},
			{Name: "web-tls", Type: keyvault.TypeSecret, Alias: "web.pfx", Format: keyvault.FormatPFX, Encoding: keyvault.EncodingBase64},
			{Name: "web-tls", Type: keyvault.TypeCert, Format: keyvault.FormatPEM, Version: "0f1e2d3c4b5a69788796a5b4c3d2e1f0"},
		}, cfg.Objects)
	})
	t.Run("v1alpha1 VM managed identity", func(t *testing.T) {
		spc := loadManifest(t, "azure-vm-managed-identity-v1alpha1.yaml")
		assert.Equal(t, "secrets-store.csi.x-k8s.io/v1alpha1", spc.APIVersion)
		cfg, err := Parse(spc.Spec.Parameters)
		require.NoError(t, err)
		assert.Equal(t, VMManagedIdentity, cfg.AuthMode())
		assert.Equal(t, "6e2a7c33-2f0e-4b8a-8f3c-1b9d7c5a4e21", cfg.UserAssignedIdentityID)
		assert.Equal(t, "new-tenant.onmicrosoft.com", cfg.TenantID)
		assert.Equal(t, "https://kv-cn-1.vault.azure.cn/", cfg.VaultURL())
		assert.Equal(t, []keyvault.Object{{Name: "storage-key", Type: keyvault.TypeSecret}}, cfg.Objects)
	})
}

func TestAuthModePrecedence(t *testing.T) {
	// Parse refuses these combinations; AuthMode still orders them as upstream.
	assert.Equal(t, PodIdentity, (&Config{UsePodIdentity: true, UseVMManagedIdentity: true, ClientID: "c"}).AuthMode())
	assert.Equal(t, VMManagedIdentity, (&Config{UseVMManagedIdentity: true, ClientID: "c"}).AuthMode())
	assert.Equal(t, WorkloadIdentity, (&Config{ClientID: "c"}).AuthMode())
	assert.Equal(t, ServicePrincipal, (&Config{}).AuthMode())
}

func TestCloudByName(t *testing.T) {
	for _, name := range []string{"AzurePublicCloud", "azurepubliccloud", "AzureCloud", "AzureUSGovernmentCloud", "AzureUSGovernment", "AzureChinaCloud"} {
		c, ok := CloudByName(name)
		assert.True(t, ok, name)
		assert.True(t, strings.HasPrefix(c.ActiveDirectoryEndpoint, "https://") && strings.HasSuffix(c.ActiveDirectoryEndpoint, "/"), name)
		assert.Equal(t, "https://"+c.KeyVaultDNSSuffix, c.KeyVaultResource, name)
	}
	for _, name := range []string{"", "AzureStackCloud", "AzureGermanCloud", "public"} {
		_, ok := CloudByName(name)
		assert.False(t, ok, name)
	}
	assert.Equal(t, "https://kv1.vault.azure.cn/", Cloud{KeyVaultDNSSuffix: "vault.azure.cn"}.VaultURL("kv1"))
}

func TestValidationErrorUnwrap(t *testing.T) {
	_, err := Parse(map[string]string{})
	require.Error(t, err)
	var verr *ValidationError
	require.True(t, errors.As(err, &verr))
	assert.Len(t, verr.Unwrap(), 3)
	assert.Equal(t, []string{`keyvaultName: must be set`, `tenantId: must be set (as tenantId or tenantID)`, `objects: must be set`}, fieldErrors(t, err))
}
