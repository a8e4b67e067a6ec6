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
	"os/signal"
	"strings"
	"syscall"
	"time"

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
//
// SIGINT and SIGTERM sent to the caller are passed on to the new process,
// and the caller waits for it, so that its tests can tear down what they
// started. Once it has exited, any process still in its network namespace
// (one its tests started and did not stop, or all of them after a test
// binary's timeout panic) is killed; if there was any, Reexec says so on
// standard error and, if the tests had passed, returns 1.
func Reexec(env []string) (exitCode int, err error) {
	cmd, err := Command(env)
	if err != nil {
		return 0, err
	}
	return run(cmd)
}

// ReexecNode is Reexec with NodeCommand. After the new process and what
// is left in its namespace are gone, it also removes the node cgroups
// (k8s.io, kubepods) that did not exist before.
func ReexecNode(env []string) (exitCode int, err error) {
	cmd, err := NodeCommand(env)
	if err != nil {
		return 0, err
	}
	before := NodeCgroups()
	code, err := run(cmd)
	if err != nil {
		return code, err
	}
	if err := before.RemoveNew(); err != nil {
		fmt.Fprintf(os.Stderr, "netns: cgroups left by the tests: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	return code, nil
}

func run(cmd *exec.Cmd) (exitCode int, err error) {
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(signals)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	// The child entered its namespace at clone(2), before it ran anything.
	ns, nsErr := netnsOf(cmd.Process.Pid)
	done := make(chan struct{})
	go func() {
		for {
			select {
			case sig := <-signals:
				_ = cmd.Process.Signal(sig)
			case <-done:
				return
			}
		}
	}()
	err = cmd.Wait()
	close(done)
	exitCode = 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			return 0, err
		}
		exitCode = ee.ExitCode()
	}
	if nsErr != nil {
		fmt.Fprintf(os.Stderr, "netns: cannot tell the tests' namespace, so nothing they left can be found: %v\n", nsErr)
		return exitCode, nil
	}
	left, err := killNamespace(ns, 15*time.Second)
	if len(left) > 0 || err != nil {
		fmt.Fprintf(os.Stderr, "netns: %d processes outlived the tests in their network namespace and were killed: %s\n",
			len(left), strings.Join(left, ", "))
		if err != nil {
			fmt.Fprintf(os.Stderr, "netns: %v\n", err)
		}
		if exitCode == 0 {
			exitCode = 1
		}
	}
	return exitCode, nil
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
