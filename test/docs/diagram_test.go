package docs

import (
	"encoding/xml"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/podauth"
)

// diagramFile is the picture of the two request paths the README shows.
const diagramFile = "../../docs/architecture.svg"

// offDiagram are the packages the daemons use that the diagram leaves out
// on purpose, with the reason: wiring and leaf helpers, not steps of a path.
var offDiagram = map[string]string{
	"pkg/kvdriver":             "wires kvdriver's packages together",
	"pkg/nmi":                  "wires nmi's packages together",
	"pkg/podauth":              "the types nmi's steps pass one another",
	"pkg/kube":                 "the API server client and informers",
	"pkg/pprofserver":          "the --pprof-addr debug listener",
	"pkg/redact":               "keeps credentials out of logs",
	"pkg/version":              "the build's version string",
	"pkg/providerapi/v1alpha1": "generated protocol code of pkg/provider",
}

// diagramText returns the text of every <text> element of the SVG.
func diagramText(t *testing.T) []string {
	t.Helper()
	f, err := os.Open(diagramFile)
	require.NoError(t, err)
	defer f.Close()
	dec := xml.NewDecoder(f)
	var texts []string
	depth := 0 // inside a <text> element
	var cur strings.Builder
	for {
		tok, err := dec.Token()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err, "%s is not well-formed XML", diagramFile)
		switch tok := tok.(type) {
		case xml.StartElement:
			if tok.Name.Local == "text" {
				depth++
			}
		case xml.EndElement:
			if tok.Name.Local == "text" {
				depth--
				texts = append(texts, cur.String())
				cur.Reset()
			}
		case xml.CharData:
			if depth > 0 {
				cur.Write(tok)
			}
		}
	}
	require.NotEmpty(t, texts, "%s has no text", diagramFile)
	return texts
}

var (
	diagramPackage = regexp.MustCompile(`\b(?:pkg|cmd)/[a-z0-9/]*[a-z0-9]`)
	diagramFlag    = regexp.MustCompile(`--[a-z][a-z-]*[a-z]`)
)

// The diagram names only packages, flags and endpoints that exist, and
// every package the daemons are built from is on it or excused.
func TestDiagramMatchesTheCode(t *testing.T) {
	texts := diagramText(t)
	all := strings.Join(texts, "\n")

	named := map[string]bool{}
	for _, p := range diagramPackage.FindAllString(all, -1) {
		named[p] = true
		matches, err := filepath.Glob(filepath.Join("..", "..", p, "*.go"))
		require.NoError(t, err)
		assert.NotEmpty(t, matches, "the diagram names %s, which has no Go files", p)
	}

	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", "../../cmd/kvdriver", "../../cmd/nmi").Output()
	require.NoError(t, err)
	const module = "github.com/kvnode/kvnode/"
	for _, p := range strings.Fields(string(out)) {
		rel, ok := strings.CutPrefix(p, module)
		if !ok || !strings.HasPrefix(rel, "pkg/") {
			continue
		}
		if why, ok := offDiagram[rel]; ok {
			assert.False(t, named[rel], "%s is on the diagram and excused from it (%s)", rel, why)
			continue
		}
		assert.True(t, named[rel], "the daemons use %s, which the diagram does not show: add it to %s or excuse it in offDiagram", rel, diagramFile)
	}
	for _, cmd := range []string{"cmd/kvdriver", "cmd/nmi"} {
		assert.True(t, named[cmd], "the diagram does not name %s", cmd)
	}

	flags := binaryFlags(t, "../../cmd/kvdriver")
	for name, f := range binaryFlags(t, "../../cmd/nmi") {
		flags[name] = f
	}
	for _, f := range diagramFlag.FindAllString(all, -1) {
		_, ok := flags[strings.TrimPrefix(f, "--")]
		assert.True(t, ok, "the diagram names %s, a flag of neither daemon", f)
	}
	assert.Contains(t, all, podauth.HostTokenPath, "the diagram's node-only endpoint")

	assert.Contains(t, readReadme(t), "](docs/architecture.svg)", "the README shows the diagram")
}
