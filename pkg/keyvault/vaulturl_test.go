package keyvault

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestVaultURL(t *testing.T) {
	cases := []struct {
		cloud, vault, want, wantErr string
	}{
		{"", "kv1", "https://kv1.vault.azure.net/", ""},
		{"AzurePublicCloud", "My-Vault-01", "https://my-vault-01.vault.azure.net/", ""},
		{"azureusgovernmentcloud", "kv-gov", "https://kv-gov.vault.usgovcloudapi.net/", ""},
		{"AzureChinaCloud", "kv-cn", "https://kv-cn.vault.azure.cn/", ""},
		{"AzureStackCloud", "kv1", "", "environment file"},
		{"Mars", "kv1", "", `cloud "Mars"`},
		{"", "k", "", "vault name"},
		{"", "1kv", "", "vault name"},
		{"", "kv-", "", "vault name"},
		{"", "kv--1", "", "vault name"},
		{"", "kv.evil.com", "", "vault name"},
		{"", "abcdefghijklmnopqrstuvwxy", "", "vault name"},
	}
	for _, tc := range cases {
		t.Run(tc.cloud+"/"+tc.vault, func(t *testing.T) {
			suffix, err := VaultDNSSuffix(tc.cloud)
			if err == nil {
				var u string
				u, err = VaultURL(tc.vault, suffix)
				if err == nil {
					assert.Equal(t, tc.want, u)
				}
			}
			if tc.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
	u, err := VaultURL("kv1", "vault.azurestack.example.")
	require.NoError(t, err)
	assert.Equal(t, "https://kv1.vault.azurestack.example/", u)
	_, err = VaultURL("kv1", "no_dns/suffix")
	assert.Error(t, err)
	_, err = VaultURL("kv1", "local")
	assert.Error(t, err)
}

func TestNormalizeVaultURL(t *testing.T) {
	u, name, err := normalizeVaultURL("https://KV1.vault.azure.net")
	require.NoError(t, err)
	assert.Equal(t, "https://kv1.vault.azure.net/", u)
	assert.Equal(t, "kv1", name)
	for _, bad := range []string{"http://kv1.vault.azure.net/", "https://kv1.vault.azure.net/secrets", "kv1", "https://u:p@kv1.vault.azure.net/", "https://kv1.vault.azure.net/?x=1"} {
		_, _, err := normalizeVaultURL(bad)
		assert.Error(t, err, bad)
	}
}
