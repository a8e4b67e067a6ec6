// Package version holds the build's version string, set at link time with
// -ldflags "-X github.com/kvnode/kvnode/pkg/version.Version=...".
package version

// Version is the kvnode release this binary was built from.
var Version = "dev"
