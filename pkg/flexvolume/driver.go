// Package flexvolume is kvdriver's FlexVolume front door: the azure/kv driver
// of the original Key Vault FlexVolume project, for clusters and manifests
// that still use it.
//
// kubelet runs the driver file
// /usr/libexec/kubernetes/kubelet-plugins/volume/exec/azure~kv/kv once per
// call, with the call in argv[1]:
//
//	kv init
//	kv mount <target dir> <JSON options>
//	kv unmount <target dir>
//
// and reads one JSON object from its output: {"status": "Success" |
// "Failure" | "Not supported", "message": ...}. kubelet reads stdout and
// stderr together, so the driver writes nothing but that object to either.
// The driver exits 0 whenever it printed a result, failures included: when
// a driver exits non-zero kubelet logs the whole call at warning level, and
// the call's argv holds the secretRef Secret's values.
//
// A mount enters kvdriver's mount path at its parameter step: ParseOptions
// turns the options into the objects, vault URL and identity request the
// CSI front door gets from a SecretProviderClass, and the shared
// volume.Publisher fetches, converts and writes them on a tmpfs.
package flexvolume

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"

	"k8s.io/klog/v2"

	"github.com/kvnode/kvnode/pkg/redact"
	"github.com/kvnode/kvnode/pkg/volume"
)

// Statuses of a FlexVolume call, spelled as kubelet compares them.
const (
	StatusSuccess      = "Success"
	StatusFailure      = "Failure"
	StatusNotSupported = "Not supported"
)

// The calls this driver serves. Every other call kubelet or the controller
// manager may make (attach, detach, waitforattach, isattached, mountdevice,
// unmountdevice, getvolumename, expandvolume, expandfs) is answered "Not
// supported", after which kubelet uses its default for it.
const (
	callInit    = "init"
	callMount   = "mount"
	callUnmount = "unmount"
)

// Capabilities are reported by init.
type Capabilities struct {
	// Attach is false: there is no device to attach; mount does all.
	Attach bool `json:"attach"`
}

// Result is the JSON object a call prints.
type Result struct {
	Status       string        `json:"status"`
	Message      string        `json:"message,omitempty"`
	Capabilities *Capabilities `json:"capabilities,omitempty"`
}

// Write prints the result as one line of JSON.
func (r Result) Write(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // keep "<target dir>" readable
	return enc.Encode(r)
}

// Failure is a failed call's result. The message is put on one line (the
// Azure SDK's errors span many), as kubelet shows it in an event.
func Failure(format string, args ...any) Result {
	return Result{Status: StatusFailure, Message: strings.Join(strings.Fields(fmt.Sprintf(format, args...)), " ")}
}

// Publisher mounts and unmounts volumes (volume.Publisher).
type Publisher interface {
	Publish(ctx context.Context, req volume.Request) (*volume.Result, error)
	Unpublish(target string) error
}

// Options tune a Driver.
type Options struct {
	// StrictParameters refuses the mistakes in the options that the
	// upstream Azure provider tolerates in the same objects; otherwise they
	// are logged and the mount goes ahead.
	StrictParameters bool
}

// Driver serves FlexVolume calls.
type Driver struct {
	publisher Publisher
	opts      Options
}

// NewDriver returns a driver that publishes through publisher.
func NewDriver(publisher Publisher, opts Options) *Driver {
	return &Driver{publisher: publisher, opts: opts}
}

// Run serves one call; args are the process arguments after the program
// name (argv[1:]). It never writes to stdout: the caller prints the result.
// The result's message holds none of the credentials the call carries.
func (d *Driver) Run(ctx context.Context, args []string) Result {
	scrub := argsScrubber(args)
	res := d.run(klog.NewContext(ctx, redact.Logger(klog.FromContext(ctx), scrub)), args)
	res.Message = scrub.String(res.Message)
	return res
}

func (d *Driver) run(ctx context.Context, args []string) Result {
	if len(args) == 0 {
		return Failure("no call given: usage: kv init | kv mount <target dir> <JSON options> | kv unmount <target dir>")
	}
	call, rest := args[0], args[1:]
	switch call {
	case callInit:
		return Result{Status: StatusSuccess, Capabilities: &Capabilities{Attach: false}}
	case callMount:
		if len(rest) != 2 {
			return Failure("mount takes 2 arguments (<target dir> <JSON options>), got %d", len(rest))
		}
		return d.mount(ctx, rest[0], rest[1])
	case callUnmount:
		if len(rest) != 1 {
			return Failure("unmount takes 1 argument (<target dir>), got %d", len(rest))
		}
		return d.unmount(ctx, rest[0])
	}
	return Result{Status: StatusNotSupported, Message: fmt.Sprintf("%q is not supported by the azure/kv driver", call)}
}

// argsScrubber knows the credentials in a call's arguments: the values
// under kubernetes.io/secret/ (kubelet passes them base64-encoded; both forms
// are scrubbed) and any option whose name or value looks like a credential.
func argsScrubber(args []string) *redact.Scrubber {
	var s redact.Scrubber
	for _, arg := range args {
		var opts map[string]any
		if json.Unmarshal([]byte(arg), &opts) != nil {
			continue
		}
		for k, v := range opts {
			str, ok := v.(string)
			if !ok {
				continue
			}
			if strings.HasPrefix(k, secretPrefix) && !redact.IdentifierKey(k) {
				s.Add(str)
				if b, err := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(str), "")); err == nil {
					s.Add(string(b), strings.TrimRight(string(b), "\r\n"))
				}
				continue
			}
			s.AddMap(map[string]string{k: str})
		}
	}
	return &s
}

func checkTarget(dir string) error {
	switch {
	case dir == "":
		return errors.New("target dir is empty")
	case !filepath.IsAbs(dir):
		return fmt.Errorf("target dir %q must be an absolute path", dir)
	}
	return nil
}

// mount publishes the volume at dir. A failure leaves dir as it was: the
// objects are fetched before anything is mounted, and the publisher undoes
// its own mount if writing fails.
func (d *Driver) mount(ctx context.Context, dir, rawOptions string) Result {
	logger := klog.FromContext(ctx).WithValues("call", callMount, "target", dir)
	if err := checkTarget(dir); err != nil {
		return Failure("mount: %v", err)
	}
	vol, err := ParseOptions(rawOptions, d.opts.StrictParameters)
	if err != nil {
		logger.Info("refused", "err", err)
		return Failure("mount %s: %v", dir, err)
	}
	for _, w := range vol.Warnings {
		logger.Info("Tolerated a mistake in the options", "option", w.Option, "problem", w.Detail)
	}
	logger = logger.WithValues("pod", klog.KRef(vol.Pod.Namespace, vol.Pod.Name), "vault", vol.VaultURL, "auth", vol.Identity.Mode)
	res, err := d.publisher.Publish(ctx, volume.Request{
		TargetPath: dir,
		VaultURL:   vol.VaultURL,
		Objects:    vol.Objects,
		Identity:   vol.Identity,
		Owner:      vol.Owner,
		// With --strict-parameters, what only the fetched objects show.
		RefuseWarnings: d.opts.StrictParameters,
	})
	if err != nil {
		logger.Error(err, "mount failed")
		return Failure("mount %s: %v", dir, err)
	}
	for _, w := range res.Warnings {
		logger.Info("Tolerated a mistake in the options", "option", w.Field, "problem", w.Detail)
	}
	logger.Info("mounted", "objects", len(vol.Objects), "files", len(res.Versions), "newMount", res.Mounted)
	return Result{Status: StatusSuccess}
}

// unmount unmounts and removes dir; a dir that is not mounted, or not
// there, is a success, so a repeated call succeeds.
func (d *Driver) unmount(ctx context.Context, dir string) Result {
	if err := checkTarget(dir); err != nil {
		return Failure("unmount: %v", err)
	}
	if err := d.publisher.Unpublish(dir); err != nil {
		klog.FromContext(ctx).Error(err, "unmount failed", "target", dir)
		return Failure("unmount %s: %v", dir, err)
	}
	klog.FromContext(ctx).Info("unmounted", "call", callUnmount, "target", dir)
	return Result{Status: StatusSuccess}
}
