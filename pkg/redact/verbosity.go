package redact

import (
	"flag"
	"strconv"
)

// MaxVerbosity is the highest log verbosity the daemons run at. From 8 up
// client-go logs the bodies of API requests and responses: a TokenRequest's
// answer is a ServiceAccount token and a Secret's body its data, written as
// a hex dump that no scrubber can recognise. 7 still shows every API call's
// URL, status, timing and headers (client-go masks Authorization).
const MaxVerbosity = 7

// CapVerbosity lowers the klog -v flag in fs to MaxVerbosity if it was set
// higher, and reports the value asked for when it did (0 otherwise), so
// that the daemon can say so in its log.
func CapVerbosity(fs *flag.FlagSet) (asked int) {
	f := fs.Lookup("v")
	if f == nil {
		return 0
	}
	v, err := strconv.Atoi(f.Value.String())
	if err != nil || v <= MaxVerbosity {
		return 0
	}
	if err := f.Value.Set(strconv.Itoa(MaxVerbosity)); err != nil {
		return 0
	}
	return v
}
