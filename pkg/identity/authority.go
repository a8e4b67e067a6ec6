package identity

import (
	"net/url"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
)

// A new Entra ID credential of the Azure SDK (MSAL underneath) costs three
// round trips before its first token: instance discovery
// (/common/discovery/instance), the tenant's OpenID configuration, and the
// token request. Instance discovery validates an authority host the
// library does not know and lists its aliases for the token cache; for the
// authority hosts of Azure's public clouds it tells nothing (MSAL itself
// trusts them without asking), and the SDK's DisableInstanceDiscovery
// skips it. Credentials for those hosts set it, which saves a round trip
// per new identity on kvdriver's cold publish and on every workload
// identity exchange of nmi. Any other host (Azure Stack Hub, a sovereign
// cloud kvnode does not list) keeps the discovery.

// knownAuthorities are the Entra ID authority hosts of the Azure clouds
// the SDK configures.
var knownAuthorities = map[string]bool{}

func init() {
	for _, c := range []cloud.Configuration{cloud.AzurePublic, cloud.AzureGovernment, cloud.AzureChina} {
		if u, err := url.Parse(c.ActiveDirectoryAuthorityHost); err == nil {
			knownAuthorities[strings.ToLower(u.Host)] = true
		}
	}
}

// KnownAuthority reports whether authorityHost (such as
// https://login.microsoftonline.com/; empty is the SDK's default, the
// public cloud) is the authority of one of Azure's public clouds, for
// which a credential may skip instance discovery.
func KnownAuthority(authorityHost string) bool {
	if authorityHost == "" {
		return true
	}
	u, err := url.Parse(authorityHost)
	if err != nil || u.Scheme != "https" || u.Path != "" && u.Path != "/" || u.User != nil || u.RawQuery != "" {
		return false
	}
	return knownAuthorities[strings.ToLower(u.Host)]
}
