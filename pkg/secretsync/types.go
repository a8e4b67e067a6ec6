package secretsync

import (
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// FormatTypes writes Secret types as a comma-separated list (a flag's
// value).
func FormatTypes(types []corev1.SecretType) string {
	s := make([]string, len(types))
	for i, t := range types {
		s[i] = string(t)
	}
	return strings.Join(s, ",")
}

// ParseTypes reads a comma-separated list of Secret types.
func ParseTypes(list string) []corev1.SecretType {
	var types []corev1.SecretType
	for _, t := range strings.Split(list, ",") {
		if t = strings.TrimSpace(t); t != "" {
			types = append(types, corev1.SecretType(t))
		}
	}
	return types
}
