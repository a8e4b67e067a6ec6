package flexvolume

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// DriverFileName is the name kubelet runs the azure/kv driver by, inside
// <volume plugin dir>/azure~kv/.
const DriverFileName = "kv"

// Install copies the program at src to dir/kv (creating dir), replacing an
// older copy atomically so kubelet never runs a half-written driver.
func Install(src, dir string) error {
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("install FlexVolume driver: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("install FlexVolume driver: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".kv-*")
	if err != nil {
		return fmt.Errorf("install FlexVolume driver: %w", err)
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("install FlexVolume driver: copy: %w", err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("install FlexVolume driver: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("install FlexVolume driver: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("install FlexVolume driver: %w", err)
	}
	if err := os.Rename(tmp.Name(), filepath.Join(dir, DriverFileName)); err != nil {
		return fmt.Errorf("install FlexVolume driver: %w", err)
	}
	return nil
}
