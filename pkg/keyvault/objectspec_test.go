package keyvault

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
)

// Fetch refuses every file name ParseObjects would refuse or rewrite: one
// set of rules for both front doors and the fetcher.
func TestFetchAndParseObjectsAgreeOnFileNames(t *testing.T) {
	for _, name := range []string{
		"a\nb", "a\x00b", "tab\tname", "d/" + strings.Repeat("x", 256), // refused by ParseObjects
		"a//b", "./a", "dir/", // cleaned by ParseObjects
		"../x", "/etc/passwd", "..data", "a/..b", ".", "",
	} {
		_, problems := ParseObjects([]ObjectSpec{{Name: "s", Type: "secret", Alias: name}})
		if name != "" {
			assert.NotEmpty(t, problems, "%q", name)
		}
		err := ValidateObjects([]Object{{Name: "s", Type: TypeSecret, Alias: name}})
		if name == "" {
			assert.NoError(t, err, "an empty alias means the object's name")
			continue
		}
		assert.Error(t, err, "%q", name)
	}
	for _, name := range []string{"a", "dir/file.pem", "a..b", "tls.crt"} {
		objs, problems := ParseObjects([]ObjectSpec{{Name: "s", Type: "secret", Alias: name}})
		assert.Empty(t, problems, name)
		assert.NoError(t, ValidateObjects(objs), name)
	}
}

func TestParseObjectsProblemsNameTheOtherObject(t *testing.T) {
	objs, problems := ParseObjects([]ObjectSpec{
		{Name: "a", Type: "secret"},
		{Name: "b", Type: "secret", Alias: "a"},
		{Name: "c", Type: "secret", Alias: "a/x"},
	})
	assert.Equal(t, []Object{{Name: "b", Type: TypeSecret, Alias: "a"}}, objs)
	if assert.Len(t, problems, 2) {
		name := func(i int) string { return []string{"first", "second", "third"}[i] }
		assert.True(t, problems[0].Tolerated)
		assert.Equal(t, 0, problems[0].Object)
		assert.Equal(t, `"a" is also written by second, which wins, as with the upstream provider; this object is not mounted`, problems[0].Render(name))
		assert.False(t, problems[1].Tolerated)
		assert.Equal(t, `"a/x" needs "a" to be a directory, but second writes a file there`, problems[1].Render(name))
	}
}
