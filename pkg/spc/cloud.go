package spc

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Cloud names accepted in cloudName, as the upstream provider (through
// go-autorest's EnvironmentFromName) accepts them: in any letter case, with
// the older aliases AzureCloud and AzureUSGovernment.
const (
	AzurePublicCloud       = "AzurePublicCloud"
	AzureUSGovernmentCloud = "AzureUSGovernmentCloud"
	AzureChinaCloud        = "AzureChinaCloud"
	AzureStackCloud        = "AzureStackCloud"
)

// maxCloudEnvFileSize bounds the Azure Stack environment file; real ones are
// about 2 KiB.
const maxCloudEnvFileSize = 1 << 20

// Cloud is the Azure cloud a vault lives in: where vaults and the token
// authority are.
type Cloud struct {
	// Name is the canonical cloud name, e.g. AzurePublicCloud.
	Name string
	// KeyVaultDNSSuffix is the vault host suffix, e.g. vault.azure.net.
	KeyVaultDNSSuffix string
	// KeyVaultResource is the resource (audience) of Key Vault tokens, e.g.
	// https://vault.azure.net; its scope is KeyVaultResource + "/.default".
	KeyVaultResource string
	// ActiveDirectoryEndpoint is the Entra ID authority host with a trailing
	// slash, e.g. https://login.microsoftonline.com/.
	ActiveDirectoryEndpoint string
}

// VaultURL is the URL of the vault named name, e.g.
// https://name.vault.azure.net/.
func (c Cloud) VaultURL(name string) string {
	return "https://" + name + "." + c.KeyVaultDNSSuffix + "/"
}

// CloudByName returns the built-in cloud called name (case-insensitive, with
// the aliases AzureCloud and AzureUSGovernment). AzureStackCloud is not
// built in: it is read from cloudEnvFileName.
func CloudByName(name string) (Cloud, bool) {
	switch strings.ToLower(name) {
	case "azurepubliccloud", "azurecloud":
		return Cloud{
			Name:                    AzurePublicCloud,
			KeyVaultDNSSuffix:       "vault.azure.net",
			KeyVaultResource:        "https://vault.azure.net",
			ActiveDirectoryEndpoint: "https://login.microsoftonline.com/",
		}, true
	case "azureusgovernmentcloud", "azureusgovernment":
		return Cloud{
			Name:                    AzureUSGovernmentCloud,
			KeyVaultDNSSuffix:       "vault.usgovcloudapi.net",
			KeyVaultResource:        "https://vault.usgovcloudapi.net",
			ActiveDirectoryEndpoint: "https://login.microsoftonline.us/",
		}, true
	case "azurechinacloud":
		return Cloud{
			Name:                    AzureChinaCloud,
			KeyVaultDNSSuffix:       "vault.azure.cn",
			KeyVaultResource:        "https://vault.azure.cn",
			ActiveDirectoryEndpoint: "https://login.chinacloudapi.cn/",
		}, true
	}
	return Cloud{}, false
}

// cloudEnvironmentFile is the part of an Azure environment file (the JSON
// form of go-autorest's azure.Environment, as AKS engine writes it for Azure
// Stack Hub) that locates Key Vault and the token authority.
type cloudEnvironmentFile struct {
	Name                    string `json:"name"`
	ActiveDirectoryEndpoint string `json:"activeDirectoryEndpoint"`
	KeyVaultEndpoint        string `json:"keyVaultEndpoint"`
	KeyVaultDNSSuffix       string `json:"keyVaultDNSSuffix"`
	ResourceIdentifiers     struct {
		KeyVault string `json:"keyVault"`
	} `json:"resourceIdentifiers"`
}

// readCloudEnvFile reads an Azure environment file into a Cloud named
// AzureStackCloud. Problems are described without the file's content.
func readCloudEnvFile(path string) (Cloud, error) {
	if !filepath.IsAbs(path) {
		return Cloud{}, fmt.Errorf("%q must be an absolute path", path)
	}
	// The path comes from a namespaced object and the driver runs as root:
	// open without blocking (a FIFO would hang the mount) and read only a
	// bounded regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return Cloud{}, fmt.Errorf("cannot read %q: %w", path, err)
	}
	defer f.Close()
	if st, err := f.Stat(); err != nil {
		return Cloud{}, fmt.Errorf("cannot read %q: %w", path, err)
	} else if !st.Mode().IsRegular() {
		return Cloud{}, fmt.Errorf("%q is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, maxCloudEnvFileSize+1))
	if err != nil {
		return Cloud{}, fmt.Errorf("cannot read %q: %w", path, err)
	}
	if len(data) > maxCloudEnvFileSize {
		return Cloud{}, fmt.Errorf("%q is larger than %d bytes", path, maxCloudEnvFileSize)
	}
	var env cloudEnvironmentFile
	// The decoder's message is left out: it can quote bytes of the file.
	if err := json.Unmarshal(data, &env); err != nil {
		return Cloud{}, fmt.Errorf("%q is not an Azure environment JSON file", path)
	}
	c := Cloud{
		Name:                    AzureStackCloud,
		KeyVaultDNSSuffix:       strings.Trim(strings.TrimSpace(env.KeyVaultDNSSuffix), "."),
		ActiveDirectoryEndpoint: strings.TrimSpace(env.ActiveDirectoryEndpoint),
		KeyVaultResource:        strings.TrimSpace(env.ResourceIdentifiers.KeyVault),
	}
	if c.KeyVaultResource == "" {
		c.KeyVaultResource = strings.TrimSpace(env.KeyVaultEndpoint)
	}
	c.KeyVaultResource = strings.TrimSuffix(c.KeyVaultResource, "/")
	switch {
	case c.KeyVaultDNSSuffix == "":
		return Cloud{}, fmt.Errorf("%q has no keyVaultDNSSuffix", path)
	case !strings.HasPrefix(c.ActiveDirectoryEndpoint, "https://"):
		return Cloud{}, fmt.Errorf("%q has no https activeDirectoryEndpoint", path)
	case c.KeyVaultResource == "":
		return Cloud{}, fmt.Errorf("%q has neither resourceIdentifiers.keyVault nor keyVaultEndpoint", path)
	}
	if !strings.HasSuffix(c.ActiveDirectoryEndpoint, "/") {
		c.ActiveDirectoryEndpoint += "/"
	}
	return c, nil
}
