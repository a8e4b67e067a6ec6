// Package keyvault fetches Key Vault secrets, keys and certificates with the
// Azure SDK for Go and renders them as the files a pod sees: PEM keys and
// certificates, PFX to PEM with the chain in order, decoded secrets, version
// history. It knows the SDK, not CSI or FlexVolume: both front doors describe
// what they want as []Object and write the returned files themselves.
package keyvault

import "os"

// ObjectType is the kind of Key Vault object to fetch.
type ObjectType string

// Object types, as the upstream Azure provider's objectType parameter names them.
const (
	TypeSecret ObjectType = "secret"
	TypeKey    ObjectType = "key"
	TypeCert   ObjectType = "cert"
)

// Format is how a certificate-backed secret is written.
type Format string

// Object formats (objectFormat).
const (
	FormatPEM Format = "pem"
	FormatPFX Format = "pfx"
)

// Encoding is how a secret's value is encoded in Key Vault (objectEncoding);
// the written file holds the decoded bytes.
type Encoding string

// Object encodings.
const (
	EncodingUTF8   Encoding = "utf-8"
	EncodingHex    Encoding = "hex"
	EncodingBase64 Encoding = "base64"
)

// DefaultFileMode is the mode of a written file when FileMode is zero.
const DefaultFileMode os.FileMode = 0o644

// Object is one Key Vault object to fetch and how to write it. The zero values
// of Format, Encoding and FileMode mean pem, utf-8 and DefaultFileMode.
type Object struct {
	// Name is the object's name in Key Vault.
	Name string
	Type ObjectType
	// Version is a specific version; empty means the latest.
	Version string
	// VersionHistory > 1 writes a directory with the newest VersionHistory
	// enabled versions as files 0 (newest) to N-1.
	VersionHistory int
	// Alias is the file name to write; empty means Name. A relative path
	// without "..".
	Alias    string
	Format   Format
	Encoding Encoding
	FileMode os.FileMode
	// Optional objects missing from the vault (no such object, or no
	// enabled version) are left out of the volume with a warning instead
	// of failing it; they appear at a later rotation once created.
	Optional bool
	// KeyVaultName names the object's own vault (empty: the request's),
	// and VaultURL is its URL, which the front door sets from the cloud.
	KeyVaultName, VaultURL string
}

// FileName is the path, relative to the mount, that the object is written to.
func (o Object) FileName() string {
	if o.Alias != "" {
		return o.Alias
	}
	return o.Name
}
