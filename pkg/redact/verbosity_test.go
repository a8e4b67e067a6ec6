package redact

import (
	"flag"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2"
)

func TestCapVerbosity(t *testing.T) {
	fs := flag.NewFlagSet("daemon", flag.ContinueOnError)
	klog.InitFlags(fs)
	t.Cleanup(func() { require.NoError(t, fs.Set("v", "0")) })
	for _, tt := range []struct {
		v     string
		asked int
		after string
	}{
		{"0", 0, "0"},
		{"7", 0, "7"},
		{"8", 8, "7"},
		{"10", 10, "7"},
	} {
		require.NoError(t, fs.Parse([]string{"-v", tt.v}))
		assert.Equal(t, tt.asked, CapVerbosity(fs), "-v %s", tt.v)
		assert.Equal(t, tt.after, fs.Lookup("v").Value.String(), "-v %s", tt.v)
		assert.Equal(t, tt.after == "7", bool(klog.V(MaxVerbosity).Enabled()), "-v %s", tt.v)
		assert.False(t, bool(klog.V(8).Enabled()), "-v %s: client-go's body logging is on", tt.v)
	}
	assert.Zero(t, CapVerbosity(flag.NewFlagSet("none", flag.ContinueOnError)), "no -v flag")
}
