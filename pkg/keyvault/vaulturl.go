package keyvault

import (
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// VaultDNSSuffix returns the Key Vault DNS suffix of a cloud named as the
// SecretProviderClass's cloudName parameter does (case-insensitive; empty is
// AzurePublicCloud). AzureStackCloud and unknown names are an error: their
// suffix must come from the cloud environment file.
func VaultDNSSuffix(cloudName string) (string, error) {
	if cloudName == "" {
		cloudName = "AzurePublicCloud"
	}
	switch strings.ToLower(cloudName) {
	case "azurepubliccloud":
		return "vault.azure.net", nil
	case "azureusgovernmentcloud":
		return "vault.usgovcloudapi.net", nil
	case "azurechinacloud":
		return "vault.azure.cn", nil
	}
	return "", fmt.Errorf("cloud %q has no built-in Key Vault DNS suffix (known: AzurePublicCloud, AzureUSGovernmentCloud, AzureChinaCloud; AzureStackCloud needs the suffix from its environment file)", cloudName)
}

// vaultNameRE: 3-24 letters, digits and hyphens, starting with a letter and
// ending with a letter or digit (Key Vault's rule; "--" is checked apart).
var vaultNameRE = regexp.MustCompile(`^[a-zA-Z][a-zA-Z0-9-]{1,22}[a-zA-Z0-9]$`)

// dnsSuffixRE is a DNS name of at least two labels.
var dnsSuffixRE = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)

// VaultURL returns the URL of a vault, https://<vaultName>.<dnsSuffix>/,
// with the name lower-cased, after checking the name and the suffix.
func VaultURL(vaultName, dnsSuffix string) (string, error) {
	if !vaultNameRE.MatchString(vaultName) || strings.Contains(vaultName, "--") {
		return "", fmt.Errorf("vault name %q: must be 3-24 letters, digits and hyphens, start with a letter, end with a letter or digit, without consecutive hyphens", vaultName)
	}
	suffix := strings.ToLower(strings.Trim(dnsSuffix, "."))
	if !dnsSuffixRE.MatchString(suffix) || !strings.Contains(suffix, ".") {
		return "", fmt.Errorf("vault DNS suffix %q is not a DNS name", dnsSuffix)
	}
	return "https://" + strings.ToLower(vaultName) + "." + suffix + "/", nil
}

// normalizeVaultURL checks that raw is an https URL of a host and returns it
// as https://host/ (host lower case) and the host's first label, the vault
// name used in messages.
func normalizeVaultURL(raw string) (string, string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", "", fmt.Errorf("vault URL %q: %w", raw, err)
	}
	if u.Scheme != "https" || u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
		return "", "", fmt.Errorf("vault URL %q: want https://<vault>.<dns suffix>/", raw)
	}
	host := strings.ToLower(u.Host)
	name, _, _ := strings.Cut(host, ".")
	return "https://" + host + "/", name, nil
}
