package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"

	"github.com/kvnode/kvnode/pkg/flexvolume"
	"github.com/kvnode/kvnode/pkg/identity"
	"github.com/kvnode/kvnode/pkg/kvdriver"
)

// FlexVolumeConfig is the command line of one FlexVolume call.
type FlexVolumeConfig struct {
	LogFile   string
	Verbosity int
	TmpfsSize string
	Timeout   time.Duration
	// NMIEndpoint is nmi's node-local /host/token/ base URL (usepodidentity).
	NMIEndpoint string
	// StrictParameters refuses what the upstream provider tolerates.
	StrictParameters bool
}

// flexVolumeArgs returns the FlexVolume call's arguments (flags, then the
// call) when the process runs as the azure/kv driver: under the name kv, as
// kubelet runs it, or as "kvdriver flexvolume ...".
func flexVolumeArgs(argv []string) ([]string, bool) {
	switch {
	case len(argv) > 0 && filepath.Base(argv[0]) == flexvolume.DriverFileName:
		return argv[1:], true
	case len(argv) > 1 && argv[1] == "flexvolume":
		return argv[2:], true
	}
	return nil, false
}

// runFlexVolume serves one call, prints its result to stdout and returns
// the exit status. kubelet reads stdout and stderr together as the result,
// so nothing else is ever written to either: logs go to --log-file or
// nowhere. The status is 0 whenever a result was printed, Failure and "Not
// supported" included: kubelet takes the outcome from the result, and a
// non-zero exit only makes it log the call's argv (which holds the secretRef
// Secret's values) at warning level. A panic becomes a Failure for the same
// reason.
func runFlexVolume(args []string, stdout io.Writer) int {
	res := safeFlexVolumeCall(args)
	if err := res.Write(stdout); err != nil {
		return 1
	}
	return 0
}

func safeFlexVolumeCall(args []string) (res flexvolume.Result) {
	defer func() {
		if r := recover(); r != nil {
			res = flexvolume.Failure("kvdriver flexvolume: internal error (%T); see --log-file", r)
			klog.ErrorS(nil, "FlexVolume call panicked", "panic", fmt.Sprintf("%T", r), "stack", string(debug.Stack()))
			klog.Flush()
		}
	}()
	return flexVolumeCall(args)
}

func flexVolumeCall(args []string) flexvolume.Result {
	var cfg FlexVolumeConfig
	fs := flag.NewFlagSet("kvdriver flexvolume", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&cfg.LogFile, "log-file", "", "append logs to this file (none when empty: kubelet reads stdout and stderr as the call's result)")
	fs.IntVar(&cfg.Verbosity, "v", 0, "log verbosity")
	fs.StringVar(&cfg.TmpfsSize, "tmpfs-size", "32m", "size limit of the volume's tmpfs")
	fs.DurationVar(&cfg.Timeout, "timeout", 2*time.Minute, "time limit of one call")
	fs.StringVar(&cfg.NMIEndpoint, "nmi-endpoint", identity.DefaultNMIEndpoint, "nmi's node-local endpoint for usepodidentity mounts")
	fs.BoolVar(&cfg.StrictParameters, "strict-parameters", false, "refuse the mistakes in the options that the upstream Azure provider tolerates (they are logged otherwise)")
	if err := fs.Parse(args); err != nil {
		return flexvolume.Failure("kvdriver flexvolume: %v; usage: [--log-file FILE] [-v N] [--tmpfs-size SIZE] [--timeout DURATION] [--strict-parameters] init | mount <target dir> <JSON options> | unmount <target dir>", err)
	}
	if cfg.Timeout <= 0 {
		return flexvolume.Failure("kvdriver flexvolume: --timeout must be positive")
	}
	logger, closeLog, err := flexVolumeLogger(cfg.LogFile, cfg.Verbosity)
	if err != nil {
		return flexvolume.Failure("kvdriver flexvolume: %v", err)
	}
	defer closeLog()

	ctx, cancel := context.WithTimeout(context.Background(), cfg.Timeout)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	// The process serves one call: an object cache could never be shared.
	driver := flexvolume.NewDriver(kvdriver.NewPublisher(kvdriver.PublisherOptions{TmpfsSize: cfg.TmpfsSize, NMIEndpoint: cfg.NMIEndpoint}), flexvolume.Options{StrictParameters: cfg.StrictParameters})
	return driver.Run(klog.NewContext(ctx, logger), fs.Args())
}

// flexVolumeLogger routes klog (this program's and its libraries' logs) to
// file, or discards it, so that nothing reaches stderr.
func flexVolumeLogger(file string, verbosity int) (logr.Logger, func(), error) {
	out, closeFn := io.Writer(io.Discard), func() {}
	if file != "" {
		f, err := os.OpenFile(file, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
		if err != nil {
			return logr.Discard(), nil, fmt.Errorf("--log-file: %w", err)
		}
		out, closeFn = f, func() { _ = f.Close() }
	}
	klogFlags := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(klogFlags)
	if err := klogFlags.Set("v", fmt.Sprint(verbosity)); err != nil {
		closeFn()
		return logr.Discard(), nil, fmt.Errorf("-v: %w", err)
	}
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(out), textlogger.Verbosity(verbosity)))
	klog.SetLogger(logger)
	return logger, func() { klog.Flush(); closeFn() }, nil
}

// installFlexVolume copies this binary to --dir/kv, where kubelet looks for
// the azure/kv driver (the chart's init container runs it).
func installFlexVolume(args []string) error {
	fs := flag.NewFlagSet("kvdriver install-flexvolume", flag.ContinueOnError)
	dir := fs.String("dir", "/usr/libexec/kubernetes/kubelet-plugins/volume/exec/azure~kv", "the driver's directory in kubelet's volume plugin dir")
	if err := fs.Parse(args); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	if err := flexvolume.Install(self, *dir); err != nil {
		return err
	}
	klog.InfoS("installed the azure/kv FlexVolume driver", "path", filepath.Join(*dir, flexvolume.DriverFileName))
	return nil
}
