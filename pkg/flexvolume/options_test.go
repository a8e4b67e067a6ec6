package flexvolume

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/keyvault"
)

const (
	testClientID     = "11111111-2222-4333-8444-555555555555"
	testClientSecret = "planted-client-secret-value"
)

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

// kubeletJSON is the JSON kubelet passes for the canonical pod volume of
// the original driver's documentation, with options replaced or removed
// (an empty string in edit removes the key).
func kubeletJSON(t *testing.T, edit map[string]string) string {
	t.Helper()
	opts := map[string]string{
		// flexVolume.options
		"usepodidentity":      "false",
		"keyvaultname":        "testkeyvault",
		"keyvaultobjectnames": "secret1;key1",
		"keyvaultobjecttypes": "secret;key",
		"resourcegroup":       "testresourcegroup",
		"subscriptionid":      "testsub",
		"tenantid":            "testtenant",
		// secretRef kvcreds, base64 as kubelet encodes it
		"kubernetes.io/secret/clientid":     b64(testClientID),
		"kubernetes.io/secret/clientsecret": b64(testClientSecret),
		// kubelet's own
		"kubernetes.io/fsType":              "",
		"kubernetes.io/readwrite":           "rw",
		"kubernetes.io/pvOrVolumeName":      "test",
		"kubernetes.io/pod.name":            "nginx-flex-kv",
		"kubernetes.io/pod.namespace":       "default",
		"kubernetes.io/pod.uid":             "7d5e2c1a-0b9f-4c6e-8a3d-2f1e0d9c8b7a",
		"kubernetes.io/serviceAccount.name": "default",
	}
	for k, v := range edit {
		if v == "" {
			delete(opts, k)
		} else {
			opts[k] = v
		}
	}
	b, err := json.Marshal(opts)
	require.NoError(t, err)
	return string(b)
}

func TestParseOptionsCanonicalExample(t *testing.T) {
	v, err := ParseOptions(kubeletJSON(t, nil), false)
	require.NoError(t, err)
	assert.Equal(t, "https://testkeyvault.vault.azure.net/", v.VaultURL)
	assert.Equal(t, []keyvault.Object{
		{Name: "secret1", Type: keyvault.TypeSecret},
		{Name: "key1", Type: keyvault.TypeKey},
	}, v.Objects)
	assert.Equal(t, identity.Request{
		Mode: identity.ServicePrincipal, AuthorityHost: "https://login.microsoftonline.com/",
		TenantID: "testtenant", ClientID: testClientID, ClientSecret: testClientSecret,
	}, v.Identity)
	assert.Equal(t, Pod{Name: "nginx-flex-kv", Namespace: "default", UID: "7d5e2c1a-0b9f-4c6e-8a3d-2f1e0d9c8b7a", ServiceAccount: "default"}, v.Pod)
	assert.Nil(t, v.Owner)
}

func TestParseOptionsEachOption(t *testing.T) {
	for _, tc := range []struct {
		name  string
		edit  map[string]string
		check func(t *testing.T, v *Volume)
	}{{
		name: "versions and aliases, empty entries are the defaults",
		edit: map[string]string{
			"keyvaultobjectnames":    "secret1;key1;cert1",
			"keyvaultobjecttypes":    "secret; key ;cert",
			"keyvaultobjectversions": "0123456789abcdef0123456789abcdef;;latest",
			"keyvaultobjectaliases":  "app/db.txt;;tls.crt",
		},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, []keyvault.Object{
				{Name: "secret1", Type: keyvault.TypeSecret, Version: "0123456789abcdef0123456789abcdef", Alias: "app/db.txt"},
				{Name: "key1", Type: keyvault.TypeKey},
				{Name: "cert1", Type: keyvault.TypeCert, Alias: "tls.crt"},
			}, v.Objects)
			assert.Equal(t, []string{"app/db.txt", "key1", "tls.crt"},
				[]string{v.Objects[0].FileName(), v.Objects[1].FileName(), v.Objects[2].FileName()})
		},
	}, {
		name: "singular options of the first releases",
		edit: map[string]string{
			"keyvaultobjectnames": "", "keyvaultobjecttypes": "",
			"keyvaultobjectname": "testsecret", "keyvaultobjecttype": "secret", "keyvaultobjectversion": "abc123",
		},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, []keyvault.Object{{Name: "testsecret", Type: keyvault.TypeSecret, Version: "abc123"}}, v.Objects)
		},
	}, {
		name: "cloudname US Government",
		edit: map[string]string{"cloudname": "AzureUSGovernmentCloud"},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, "https://testkeyvault.vault.usgovcloudapi.net/", v.VaultURL)
			assert.Equal(t, "https://login.microsoftonline.us/", v.Identity.AuthorityHost)
		},
	}, {
		name: "cloudname China, any letter case",
		edit: map[string]string{"cloudname": "azurechinacloud"},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, "https://testkeyvault.vault.azure.cn/", v.VaultURL)
			assert.Equal(t, "https://login.chinacloudapi.cn/", v.Identity.AuthorityHost)
		},
	}, {
		name: "VM managed identity, user-assigned, no secretRef",
		edit: map[string]string{
			"usevmmanagedidentity": "true", "vmmanagedidentityclientid": "99999999-8888-4777-8666-555555555555",
			"kubernetes.io/secret/clientid": "", "kubernetes.io/secret/clientsecret": "",
		},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, identity.VMManagedIdentity, v.Identity.Mode)
			assert.Equal(t, "99999999-8888-4777-8666-555555555555", v.Identity.ManagedIdentityID)
			assert.Empty(t, v.Identity.ClientSecret)
		},
	}, {
		name: "VM managed identity, system-assigned",
		edit: map[string]string{"usevmmanagedidentity": "true"},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, identity.VMManagedIdentity, v.Identity.Mode)
			assert.Empty(t, v.Identity.ManagedIdentityID)
		},
	}, {
		name: "pod identity carries the pod",
		edit: map[string]string{"usepodidentity": "true", "kubernetes.io/secret/clientid": "", "kubernetes.io/secret/clientsecret": ""},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, identity.PodIdentity, v.Identity.Mode)
			assert.Equal(t, "default", v.Identity.Namespace)
			assert.Equal(t, "default", v.Identity.ServiceAccount)
		},
	}, {
		name: "secret values: white space in the encoding, trailing newline in the secret",
		edit: map[string]string{
			"kubernetes.io/secret/clientid":     b64(testClientID + "\n")[:8] + "\n" + b64(testClientID + "\n")[8:],
			"kubernetes.io/secret/clientsecret": b64(testClientSecret + "\n"),
		},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, testClientID, v.Identity.ClientID)
			assert.Equal(t, testClientSecret, v.Identity.ClientSecret)
		},
	}, {
		name: "fsGroup owns the files",
		edit: map[string]string{"kubernetes.io/mounterArgs.FsGroup": "2000"},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, &atomicwriter.Owner{UID: -1, GID: 2000}, v.Owner)
		},
	}, {
		name: "fsGroup as the FlexVolume document spells it",
		edit: map[string]string{"kubernetes.io/fsGroup": "3000"},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, &atomicwriter.Owner{UID: -1, GID: 3000}, v.Owner)
		},
	}, {
		name: "read-only volume, other Secret keys, no resource group",
		edit: map[string]string{"kubernetes.io/readwrite": "ro", "kubernetes.io/secret/note": b64("x"), "resourcegroup": "", "subscriptionid": ""},
		check: func(t *testing.T, v *Volume) {
			assert.Len(t, v.Objects, 2)
		},
	}, {
		name: "two objects, one file: the later wins, with a warning",
		edit: map[string]string{"keyvaultobjectaliases": ";secret1"},
		check: func(t *testing.T, v *Volume) {
			require.Len(t, v.Objects, 1)
			assert.Equal(t, "key1", v.Objects[0].Name)
			assert.Equal(t, "secret1", v.Objects[0].FileName())
			require.Len(t, v.Warnings, 1)
			assert.Equal(t, "keyvaultobjectnames[0]", v.Warnings[0].Option)
			assert.Contains(t, v.Warnings[0].Detail, `"secret1" is also written by keyvaultobjectnames[1], which wins`)
		},
	}, {
		name: "tenant as a domain, vault name upper case",
		edit: map[string]string{"tenantid": "contoso.onmicrosoft.com", "keyvaultname": "TestKeyVault"},
		check: func(t *testing.T, v *Volume) {
			assert.Equal(t, "contoso.onmicrosoft.com", v.Identity.TenantID)
			assert.Equal(t, "https://TestKeyVault.vault.azure.net/", v.VaultURL)
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ParseOptions(kubeletJSON(t, tc.edit), false)
			require.NoError(t, err)
			tc.check(t, v)
		})
	}
}

func TestParseOptionsProblems(t *testing.T) {
	for _, tc := range []struct {
		name string
		raw  string            // used when set
		edit map[string]string // else the canonical example edited
		// strict refuses what is tolerated otherwise.
		strict bool
		// want are the problems, "option: detail" substrings, in order.
		want []string
	}{
		{name: "malformed JSON", raw: `{"keyvaultname": "kv1",`, want: []string{"options: not a JSON object of string values: syntax error"}},
		{name: "JSON array", raw: `["keyvaultname"]`, want: []string{"options: not a JSON object of string values: the argument is a JSON array"}},
		{name: "non-string values", raw: `{"usepodidentity": false, "keyvaultname": 12}`,
			want: []string{"keyvaultname: must be a JSON string, not a number", "usepodidentity: must be a JSON string, not a boolean"}},
		{name: "null", raw: `null`, want: []string{"options: not a JSON object of string values: null"}},
		{name: "empty keyvaultname", edit: map[string]string{"keyvaultname": " "}, want: []string{"keyvaultname: must be set"}},
		{name: "bad keyvaultname", edit: map[string]string{"keyvaultname": "kv_1"}, want: []string{`keyvaultname: "kv_1" may contain only letters, digits and hyphens`}},
		{name: "empty tenantid", edit: map[string]string{"tenantid": ""}, want: []string{"tenantid: must be set"}},
		{name: "bad tenantid", edit: map[string]string{"tenantid": "evil/oauth2"}, want: []string{`tenantid: "evil/oauth2" must be a tenant ID`}},
		{name: "no object names", edit: map[string]string{"keyvaultobjectnames": ""}, want: []string{"keyvaultobjectnames: must be set"}},
		{name: "no object types", edit: map[string]string{"keyvaultobjecttypes": ""}, want: []string{"keyvaultobjecttypes: must be set: one type (secret, key or cert) per object"}},
		{name: "names vs types", edit: map[string]string{"keyvaultobjecttypes": "secret"},
			want: []string{"keyvaultobjecttypes: has 1 entry but keyvaultobjectnames has 2 entries"}},
		{name: "names vs versions", edit: map[string]string{"keyvaultobjectversions": "a;b;c"},
			want: []string{"keyvaultobjectversions: has 3 entries but keyvaultobjectnames has 2 entries"}},
		{name: "names vs aliases", edit: map[string]string{"keyvaultobjectaliases": "only-one"},
			want: []string{"keyvaultobjectaliases: has 1 entry but keyvaultobjectnames has 2 entries"}},
		{name: "trailing separator", edit: map[string]string{"keyvaultobjectnames": "secret1;key1;", "keyvaultobjecttypes": "secret;key;"},
			want: []string{"keyvaultobjectnames[2]: must be set", "keyvaultobjecttypes[2]: must be set to secret, key or cert"}},
		{name: "mismatch still checks the vault", edit: map[string]string{"keyvaultobjecttypes": "secret", "keyvaultname": ""},
			want: []string{"keyvaultobjecttypes: has 1 entry", "keyvaultname: must be set"}},
		{name: "unknown object type", edit: map[string]string{"keyvaultobjecttypes": "secret;certificate"},
			want: []string{`keyvaultobjecttypes[1]: "certificate" is not one of secret, key, cert`}},
		{name: "unknown singular object type", edit: map[string]string{"keyvaultobjectnames": "", "keyvaultobjecttypes": "", "keyvaultobjectname": "s", "keyvaultobjecttype": "Secret"},
			want: []string{`keyvaultobjecttype: "Secret" is not one of secret, key, cert`}},
		{name: "singular and plural", edit: map[string]string{"keyvaultobjectname": "s"},
			want: []string{"keyvaultobjectnames: cannot be combined with keyvaultobjectname"}},
		{name: "bad object name", edit: map[string]string{"keyvaultobjectnames": "secret1;key_1"},
			want: []string{`keyvaultobjectnames[1]: "key_1" must be 1-127 letters, digits and hyphens`}},
		{name: "bad version", edit: map[string]string{"keyvaultobjectversions": ";v-1"},
			want: []string{`keyvaultobjectversions[1]: "v-1" must contain only letters and digits`}},
		{name: "alias outside the mount", edit: map[string]string{"keyvaultobjectaliases": "../etc/passwd;k"},
			want: []string{`keyvaultobjectaliases[0]: "../etc/passwd" must be a relative path inside the mount`}},
		{name: "alias reserved by the atomic writer", edit: map[string]string{"keyvaultobjectaliases": "..data;k"},
			want: []string{`keyvaultobjectaliases[0]: "..data" must not have a path segment starting with ".."`}},
		{name: "two objects, one file, strict", edit: map[string]string{"keyvaultobjectaliases": ";secret1"}, strict: true,
			want: []string{`keyvaultobjectnames[0]: "secret1" is also written by keyvaultobjectnames[1], which wins`}},
		{name: "unknown cloud", edit: map[string]string{"cloudname": "AzureGermanCloud"},
			want: []string{`cloudname: "AzureGermanCloud" is not one of AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud`}},
		{name: "Azure Stack", edit: map[string]string{"cloudname": "AzureStackCloud"},
			want: []string{"cloudname: AzureStackCloud needs an environment file"}},
		{name: "missing credentials", edit: map[string]string{"kubernetes.io/secret/clientid": "", "kubernetes.io/secret/clientsecret": ""},
			want: []string{"kubernetes.io/secret/clientid: missing: set secretRef to a Secret of type azure/kv", "kubernetes.io/secret/clientsecret: missing"}},
		{name: "missing client secret", edit: map[string]string{"kubernetes.io/secret/clientsecret": ""},
			want: []string{`kubernetes.io/secret/clientsecret: missing: the secretRef Secret needs the key "clientsecret"`}},
		{name: "empty client secret", edit: map[string]string{"kubernetes.io/secret/clientsecret": b64("\n")},
			want: []string{"kubernetes.io/secret/clientsecret: is empty in the secretRef Secret"}},
		{name: "bad base64 client ID", edit: map[string]string{"kubernetes.io/secret/clientid": "not base64!"},
			want: []string{"kubernetes.io/secret/clientid: is not valid base64"}},
		{name: "bad base64 client secret", edit: map[string]string{"kubernetes.io/secret/clientsecret": testClientSecret},
			want: []string{"kubernetes.io/secret/clientsecret: is not valid base64"}},
		{name: "bad boolean", edit: map[string]string{"usepodidentity": "yes"},
			want: []string{`usepodidentity: "yes" is not a boolean`}},
		{name: "two identities", edit: map[string]string{"usepodidentity": "true", "usevmmanagedidentity": "true"},
			want: []string{"usepodidentity: cannot be combined with usevmmanagedidentity"}},
		{name: "managed identity client ID without managed identity", edit: map[string]string{"vmmanagedidentityclientid": "x"},
			want: []string{`vmmanagedidentityclientid: is used only with usevmmanagedidentity "true"`}},
		{name: "pod identity without the pod", edit: map[string]string{"usepodidentity": "true", "kubernetes.io/pod.name": ""},
			want: []string{"kubernetes.io/pod.name: kubelet passed no pod name and namespace"}},
		{name: "misspelt option", edit: map[string]string{"keyvaultobjectalias": "a;b"},
			want: []string{"keyvaultobjectalias: is not an azure/kv option"}},
		{name: "option in camel case", edit: map[string]string{"keyVaultName": "kv"},
			want: []string{"keyVaultName: is not an azure/kv option (option names are lower case: keyvaultname)"}},
		{name: "bad fsGroup", edit: map[string]string{"kubernetes.io/mounterArgs.FsGroup": "-1"},
			want: []string{`kubernetes.io/mounterArgs.FsGroup: "-1" is not a group ID`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := tc.raw
			if raw == "" {
				raw = kubeletJSON(t, tc.edit)
			}
			v, err := ParseOptions(raw, tc.strict)
			require.Error(t, err)
			assert.Nil(t, v)
			var oe *OptionsError
			require.True(t, errors.As(err, &oe), "%T", err)
			require.Len(t, oe.Problems, len(tc.want), "%v", err)
			for i, want := range tc.want {
				got := oe.Problems[i].Option + ": " + oe.Problems[i].Detail
				assert.True(t, strings.HasPrefix(got, want), "problem %d: got %q, want prefix %q", i, got, want)
			}
			assert.True(t, strings.HasPrefix(err.Error(), "invalid azure/kv options: "), err.Error())
			assert.NotContains(t, err.Error(), testClientSecret)
			assert.NotContains(t, err.Error(), b64(testClientSecret))
		})
	}
}
