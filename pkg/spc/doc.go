// Package spc holds the SecretProviderClass API (secrets-store.csi.x-k8s.io/v1)
// that kvnode shares with the upstream secrets-store CSI driver, and turns the
// Azure provider's spec.parameters into a typed, validated Config.
//
// The parameters are those the upstream Azure provider reads (keyvaultName,
// tenantId/tenantID, cloudName, cloudEnvFileName, usePodIdentity,
// useVMManagedIdentity, useAzureTokenProxy, userAssignedIdentityID,
// clientID, objects); the objects' own rules belong to
// keyvault.ParseObjects, which the FlexVolume front door shares.
//
// A drop-in mounts what upstream mounts. Parse sorts each problem it finds
// into one of two kinds, each a FieldError naming the parameter:
//
//   - Errors, in a *ValidationError: what upstream refuses too (a missing
//     vault name or tenant, an unknown cloud or object type, two identity
//     modes, YAML it cannot read), what cannot work anywhere (a tenant that
//     would change the authority URL, an object name Key Vault cannot
//     hold), and the few things upstream does unsafely: filePermission
//     outside 0001-0777 (setuid, setgid and sticky bits; a non-octal value,
//     which upstream writes as mode 0), control characters in file names,
//     and file names that leave the mount or use the atomic writer's ".."
//     entries. cloudEnvFileName (AzureStackCloud) must be an absolute path
//     to a regular file of at most 1 MiB: the driver runs as root and the
//     path comes from a namespaced object.
//   - Warnings, in Config.Warnings: likely mistakes upstream lets through,
//     mounted exactly as upstream mounts them. Unknown or misspelt keys
//     (upstream ignores "filePermision" and writes a 0644 file), parameters
//     of earlier releases, clientID next to pod or VM identity,
//     userAssignedIdentityID without VM identity, an empty objects array (an
//     empty volume), a vault name that passes upstream's check but no vault
//     can have, a negative or very large objectVersionHistory, objectFormat
//     "PFX" on a key or cert, file names with empty or "." segments
//     (cleaned), and two objects writing one file (the later wins).
//
// kvdriver records the warnings as a Warning event on the pod; with
// --strict-parameters it refuses them instead.
package spc
