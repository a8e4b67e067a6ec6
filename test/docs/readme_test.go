// Package docs holds the tests that keep the README true to the code.
package docs

import (
	"bufio"
	"flag"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2"
	"sigs.k8s.io/yaml"
)

// helpFlag is one flag as a binary's --help prints it.
type helpFlag struct {
	def    string // the "(default ...)" value, unquoted; empty when none is printed
	hasDef bool
}

var (
	// "  -name type" or "  -name": a flag's first line in flag.PrintDefaults.
	helpName = regexp.MustCompile(`^  -([A-Za-z0-9_-]+)(?: \S+)?$`)
	// The default flag.PrintDefaults appends to a usage text.
	helpDefault = regexp.MustCompile(`\(default (.*)\)$`)
)

// binaryFlags builds the command and returns the flags its --help lists,
// without klog's, which every kvnode binary registers as they are.
func binaryFlags(t *testing.T, pkg string) map[string]helpFlag {
	t.Helper()
	if flags, ok := builtFlags[pkg]; ok {
		return maps.Clone(flags)
	}
	bin := filepath.Join(t.TempDir(), filepath.Base(pkg))
	out, err := exec.Command("go", "build", "-o", bin, pkg).CombinedOutput()
	require.NoError(t, err, "go build %s: %s", pkg, out)
	// --help exits with flag.ErrHelp's status; only the text matters.
	help, _ := exec.Command(bin, "--help").CombinedOutput()

	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	flags := map[string]helpFlag{}
	var name string
	sc := bufio.NewScanner(strings.NewReader(string(help)))
	for sc.Scan() {
		line := sc.Text()
		if m := helpName.FindStringSubmatch(line); m != nil {
			name = m[1]
			if klogFlags.Lookup(name) == nil || name == "v" {
				flags[name] = helpFlag{}
			}
			continue
		}
		if f, ok := flags[name]; ok && strings.HasPrefix(line, "    \t") {
			if m := helpDefault.FindStringSubmatch(line); m != nil {
				f.def, f.hasDef = strings.Trim(m[1], `"`), true
				flags[name] = f
			}
		}
	}
	require.NotEmpty(t, flags, "no flags found in %s --help:\n%s", pkg, help)
	builtFlags[pkg] = flags
	return maps.Clone(flags)
}

// builtFlags holds binaryFlags' answers, so that each binary is built once
// per test run (the tests of this package do not run in parallel).
var builtFlags = map[string]map[string]helpFlag{}

// readmeRow is one row of a README table whose first cell names keys (flags
// or chart values) in backticks and whose second is their default.
type readmeRow struct {
	keys []string // flags without their leading dashes
	def  string   // the Default cell as written
}

var backticked = regexp.MustCompile("`([^`]*)`")

// readmeTable returns the rows of the one table whose header starts with
// header in the README section that starts with heading.
func readmeTable(t *testing.T, readme, heading, header string) []readmeRow {
	t.Helper()
	start := strings.Index(readme, "\n"+heading+"\n")
	require.GreaterOrEqual(t, start, 0, "README has no %q section", heading)
	section := readme[start+1:]
	if end := strings.Index(section[len(heading):], "\n## "); end >= 0 {
		section = section[:len(heading)+end]
	}
	var rows []readmeRow
	in := false
	for line := range strings.Lines(section) {
		line = strings.TrimRight(line, "\n")
		switch {
		case strings.HasPrefix(line, header):
			require.False(t, in || rows != nil, "%s: more than one %q table", heading, header)
			in = true
		case in && strings.HasPrefix(line, "|---"):
		case in && strings.HasPrefix(line, "| "):
			cells := strings.Split(strings.Trim(line, "|"), "|")
			require.Len(t, cells, 3, "%s: a table row without three cells: %s", heading, line)
			for i := range cells {
				cells[i] = strings.TrimSpace(cells[i])
			}
			var r readmeRow
			for _, m := range backticked.FindAllStringSubmatch(cells[0], -1) {
				r.keys = append(r.keys, strings.TrimLeft(m[1], "-"))
			}
			require.NotEmpty(t, r.keys, "%s: a row that names nothing: %s", heading, line)
			r.def = cells[1]
			rows = append(rows, r)
		default:
			in = false
		}
	}
	require.NotEmpty(t, rows, "%s: no %q table", heading, header)
	return rows
}

// documentedKeys returns the keys rows name, checking that none is named
// twice and that each exists; prefix is how the README writes them ("--").
func documentedKeys(t *testing.T, rows []readmeRow, prefix string, exists func(string) bool) map[string]bool {
	t.Helper()
	documented := map[string]bool{}
	for _, r := range rows {
		for _, k := range r.keys {
			assert.False(t, documented[k], "%s%s is in the README's table twice", prefix, k)
			documented[k] = true
			assert.True(t, exists(k), "the README documents %s%s, which does not exist", prefix, k)
		}
	}
	return documented
}

// literalDefaults returns the defaults a Default cell states, one per flag,
// when the cell is nothing but backticked literals ("`50`, `100`"); nil when
// it says more (an environment variable, the chart's value, prose).
func literalDefaults(cell string, n int) []string {
	parts := strings.Split(cell, ", ")
	if len(parts) != n {
		return nil
	}
	var out []string
	for _, p := range parts {
		m := backticked.FindStringSubmatch(p)
		if m == nil || m[0] != p || strings.HasPrefix(m[1], "$") {
			return nil
		}
		out = append(out, m[1])
	}
	return out
}

// sameDefault compares a README default with the one --help prints,
// durations by value ("2m" is "2m0s").
func sameDefault(readme, help string) bool {
	if readme == help {
		return true
	}
	a, errA := time.ParseDuration(readme)
	b, errB := time.ParseDuration(help)
	return errA == nil && errB == nil && a == b
}

// TestReadmeFlagTables compares each binary's flag table in the README with
// its --help: every flag it has is documented, every documented flag
// exists, and a default the table states as a literal is the binary's.
func TestReadmeFlagTables(t *testing.T) {
	readme := readReadme(t)
	for _, c := range []struct{ heading, pkg string }{
		{"## kvdriver", "github.com/kvnode/kvnode/cmd/kvdriver"},
		{"## nmi", "github.com/kvnode/kvnode/cmd/nmi"},
	} {
		t.Run(filepath.Base(c.pkg), func(t *testing.T) {
			have := binaryFlags(t, c.pkg)
			rows := readmeTable(t, readme, c.heading, "| Flag | Default |")
			documented := documentedKeys(t, rows, "--", func(f string) bool { _, ok := have[f]; return ok })
			for _, r := range rows {
				defs := literalDefaults(r.def, len(r.keys))
				for i, def := range defs {
					h, ok := have[r.keys[i]]
					if !ok {
						continue
					}
					if !h.hasDef {
						// flag.PrintDefaults leaves out zero values.
						assert.Contains(t, []string{"false", "0", "0s", ""}, def,
							"--%s: the README says the default is %q, --help shows none (the zero value)", r.keys[i], def)
						continue
					}
					assert.True(t, sameDefault(def, h.def), "--%s: the README says the default is %q, --help says %q", r.keys[i], def, h.def)
				}
			}
			var missing []string
			for f := range have {
				if !documented[f] {
					missing = append(missing, "--"+f)
				}
			}
			slices.Sort(missing)
			assert.Empty(t, missing, "flags of %s the README's table does not document", filepath.Base(c.pkg))
		})
	}
}

func readReadme(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../../README.md")
	require.NoError(t, err)
	return string(b)
}

// chartValues flattens values.yaml: each key's dotted path and value, for
// every map on the way down and every value that is not a map.
func chartValues(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("../../charts/kvnode/values.yaml")
	require.NoError(t, err)
	var root map[string]any
	require.NoError(t, yaml.Unmarshal(b, &root))
	out := map[string]any{}
	var walk func(prefix string, m map[string]any)
	walk = func(prefix string, m map[string]any) {
		for k, v := range m {
			path := prefix + k
			out[path] = v
			if sub, ok := v.(map[string]any); ok {
				walk(path+".", sub)
			}
		}
	}
	walk("", root)
	return out
}

// valueText is how the README writes a chart default: YAML's scalar text,
// "" for an empty string, [] for an empty list; "" and false when the
// value has no one-word form.
func valueText(v any) (string, bool) {
	switch v := v.(type) {
	case string:
		if v == "" {
			return `""`, true
		}
		return v, true
	case bool:
		return strconv.FormatBool(v), true
	case float64:
		return strconv.FormatFloat(v, 'f', -1, 64), true
	case []any:
		if len(v) == 0 {
			return "[]", true
		}
	}
	return "", false
}

// TestReadmeChartValues compares the README's chart values table with
// values.yaml: every value is documented (by its own key or a key above
// it), every documented key exists, and a default the table states as a
// literal is the chart's.
func TestReadmeChartValues(t *testing.T) {
	values := chartValues(t)
	rows := readmeTable(t, readReadme(t), "## Chart values", "| Value | Default |")
	documented := documentedKeys(t, rows, "", func(k string) bool { _, ok := values[k]; return ok })
	for _, r := range rows {
		for i, def := range literalDefaults(r.def, len(r.keys)) {
			v, ok := values[r.keys[i]]
			if !ok {
				continue
			}
			if text, ok := valueText(v); ok {
				assert.Equal(t, text, def, "%s: the README's default is not values.yaml's", r.keys[i])
			}
		}
	}
	var missing []string
	for k, v := range values {
		if _, isMap := v.(map[string]any); isMap {
			continue
		}
		covered := false
		for p := k; p != "" && !covered; {
			covered = documented[p]
			i := strings.LastIndex(p, ".")
			if i < 0 {
				break
			}
			p = p[:i]
		}
		if !covered {
			missing = append(missing, k)
		}
	}
	slices.Sort(missing)
	assert.Empty(t, missing, "chart values the README's table does not document")
}

var (
	// A Go test, benchmark or fuzz target the README names; a trailing *
	// stands for every one with that prefix.
	readmeTestName = regexp.MustCompile(`\b(?:Test|Benchmark|Fuzz)[A-Z][A-Za-z0-9_]*\*?`)
	testFuncDecl   = regexp.MustCompile(`(?m)^func ((?:Test|Benchmark|Fuzz)[A-Z][A-Za-z0-9_]*)\(`)
)

// The tests the README cites as proof exist under those names.
func TestReadmeNamesOnlyTestsThatExist(t *testing.T) {
	var defined []string
	root := filepath.Join("..", "..")
	err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "testdata") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, "_test.go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range testFuncDecl.FindAllSubmatch(b, -1) {
			defined = append(defined, string(m[1]))
		}
		return nil
	})
	require.NoError(t, err)
	require.NotEmpty(t, defined)

	cited := map[string]bool{}
	for _, name := range readmeTestName.FindAllString(readReadme(t), -1) {
		cited[name] = true
	}
	require.NotEmpty(t, cited, "the README names no test")
	for name := range cited {
		prefix, wildcard := strings.CutSuffix(name, "*")
		found := slices.ContainsFunc(defined, func(d string) bool {
			return d == name || (wildcard && strings.HasPrefix(d, prefix))
		})
		assert.True(t, found, "the README names %s, which no _test.go file defines", name)
	}
}
