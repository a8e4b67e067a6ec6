package spc

import (
	"maps"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// readmeKeys returns the backticked names in the first cell of each row of
// the README table whose header row starts with header.
func readmeKeys(t *testing.T, header string) []string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	name := regexp.MustCompile("`([^`]*)`")
	var keys []string
	in := false
	for line := range strings.Lines(string(b)) {
		switch {
		case strings.HasPrefix(line, header):
			require.False(t, in || keys != nil, "the README has more than one %q table", header)
			in = true
		case in && strings.HasPrefix(line, "|---"):
		case in && strings.HasPrefix(line, "| "):
			first, _, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
			for _, m := range name.FindAllStringSubmatch(first, -1) {
				keys = append(keys, m[1])
			}
		default:
			in = false
		}
	}
	require.NotEmpty(t, keys, "the README has no %q table", header)
	return keys
}

// TestReadmeDocumentsEveryParameter keeps the README's SecretProviderClass
// tables equal to what the parser reads: every parameter and object key,
// and nothing else.
func TestReadmeDocumentsEveryParameter(t *testing.T) {
	for _, c := range []struct {
		header string
		known  []string
	}{
		{"| Parameter |", slices.Sorted(maps.Keys(knownParams))},
		{"| Object key |", slices.Sorted(maps.Keys(objectKeys))},
	} {
		documented := readmeKeys(t, c.header)
		slices.Sort(documented)
		assert.Equal(t, c.known, documented, "the README's %q table", c.header)
	}
}
