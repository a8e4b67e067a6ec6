// Package spc holds the SecretProviderClass API (secrets-store.csi.x-k8s.io/v1)
// that kvnode shares with the upstream secrets-store CSI driver, and turns the
// Azure provider's spec.parameters into a typed, validated Config.
//
// The parameters are those the upstream Azure provider reads (keyvaultName,
// tenantId/tenantID, cloudName, cloudEnvFileName, usePodIdentity,
// useVMManagedIdentity, userAssignedIdentityID, clientID, objects); manifests
// written for it parse unchanged unless they hold a mistake the upstream
// provider let through silently. Every such mistake is reported as a
// FieldError naming the parameter, and Parse reports all of them at once.
//
// Where kvnode is stricter than the upstream provider:
//
//   - keyvaultName follows Azure's naming rule in full (3-24 characters,
//     letters, digits and hyphens, starting with a letter, not ending with a
//     hyphen, no "--"); upstream checks only length and character set, so the
//     extra names it accepted could never reach a vault.
//   - Inside an object, keys are matched exactly and unknown keys are
//     refused: upstream ignores a misspelt "objectAlais" or "filePermision"
//     and silently writes the wrong file name or a world-readable file.
//   - objectType must be set; an empty or misspelt type failed upstream only
//     at fetch time.
//   - objectFormat and objectEncoding on a type they do not apply to are
//     refused in any letter case (upstream let "PFX" on a cert through).
//   - objectVersion must be letters and digits (Key Vault versions are hex).
//     "latest" means the latest version, as upstream's history code treats it.
//   - objectVersionHistory is at most MaxVersionHistory and may not be
//     combined with a specific objectVersion (see Parse).
//   - filePermission must be 0001-0777: no setuid, setgid or sticky bits, and
//     not 0 (a zero FileMode means the default 0644 to package keyvault).
//   - File names: beyond upstream's "relative, no .." check, empty and "."
//     segments, segments starting with ".." (kubelet's atomic writer owns
//     those), control characters and two objects writing the same path (or
//     a file where another needs a directory) are refused.
//   - An empty objects array is an error; newer upstream versions mount an
//     empty volume.
//   - Identity settings that contradict each other are refused instead of
//     one silently winning (see Config.AuthMode), and
//     usePodServiceAccountAnnotation "true", which kvnode does not implement,
//     is refused rather than ignored.
//   - tenantId/tenantID must be a GUID or a domain name (it becomes part of
//     the token authority URL).
//   - cloudEnvFileName (AzureStackCloud) must be an absolute path to a
//     regular file of at most 1 MiB; the driver runs as root and the path
//     comes from a namespaced object.
package spc
