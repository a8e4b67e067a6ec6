// Package netns runs the current program again inside a network namespace of
// its own that has only a loopback interface, so that nothing it starts can
// send a packet off the machine: a dial to any address but loopback fails at
// once with "network is unreachable".
//
// The caller re-executes itself with Command or Reexec, passing an
// environment entry by which the new process recognises that it runs inside;
// that process calls LoopbackUp first (a new namespace's lo is down). Creating
// a network namespace needs root (CAP_SYS_ADMIN).
package netns

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"

	"golang.org/x/sys/unix"
)

// Command returns a command that runs the current executable again, with the
// same arguments, in a new network namespace. Its environment is the current
// one plus env; it shares the caller's stdin, stdout and stderr, and it is
// killed if the caller dies.
func Command(env []string) (*exec.Cmd, error) {
	return command(env, syscall.CLONE_NEWNET)
}

// NodeCommand is Command with a new mount namespace as well, for a test
// that plays a whole node: what it mounts stays in that namespace and goes
// with it. The new process must call PrivateMounts first.
func NodeCommand(env []string) (*exec.Cmd, error) {
	return command(env, syscall.CLONE_NEWNET|syscall.CLONE_NEWNS)
}

func command(env []string, cloneflags uintptr) (*exec.Cmd, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("locate the running executable: %w", err)
	}
	cmd := exec.Command(self, os.Args[1:]...)
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: cloneflags, Pdeathsig: syscall.SIGKILL}
	return cmd, nil
}

// Reexec runs Command(env) to completion and returns the new process's exit
// code (-1 if a signal ended it). err is set only when the process could not
// be run at all.
func Reexec(env []string) (exitCode int, err error) {
	cmd, err := Command(env)
	if err != nil {
		return 0, err
	}
	return run(cmd)
}

// ReexecNode is Reexec with NodeCommand.
func ReexecNode(env []string) (exitCode int, err error) {
	cmd, err := NodeCommand(env)
	if err != nil {
		return 0, err
	}
	return run(cmd)
}

func run(cmd *exec.Cmd) (exitCode int, err error) {
	if err := cmd.Run(); err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode(), nil
		}
		return 0, err
	}
	return 0, nil
}

// PrivateMounts makes every mount of the calling process's (new) mount
// namespace a slave of the machine's: mounts made on the machine still
// appear inside, and mounts made inside never propagate out.
func PrivateMounts() error {
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_SLAVE, ""); err != nil {
		return fmt.Errorf("make / a recursive slave mount: %w", err)
	}
	return nil
}

// LoopbackUp sets the IFF_UP flag on lo in the calling process's network
// namespace.
func LoopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("get flags of lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}
