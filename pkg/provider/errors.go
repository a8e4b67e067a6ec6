package provider

import (
	"fmt"

	"google.golang.org/grpc/codes"
)

// Kind says what went wrong with a forwarded mount, so that the CSI edge
// can answer with a gRPC code of its own choosing.
type Kind int

const (
	// KindInvalidName: spec.provider is not a name a plugin socket can
	// have.
	KindInvalidName Kind = iota + 1
	// KindNotInstalled: no socket for the provider in any providers
	// directory: the plugin is not installed on this node.
	KindNotInstalled
	// KindUnavailable: the socket exists but the plugin does not answer.
	KindUnavailable
	// KindCall: the Mount call failed with a gRPC status from the plugin
	// (Code holds it).
	KindCall
	// KindRefused: the plugin answered with an error code in the response.
	KindRefused
	// KindInvalidResponse: the plugin's answer cannot be written (a path
	// leaving the mount, a bad mode, too many files, no object versions).
	KindInvalidResponse
)

// Error is a failed forwarded mount. Its text never holds the request's
// secrets or the files' contents.
type Error struct {
	Kind     Kind
	Provider string
	// Socket is the plugin's socket, once found.
	Socket string
	// Status is the plugin's gRPC code (KindCall, KindUnavailable).
	Status codes.Code
	// Code is the error code in the plugin's response (KindRefused).
	Code string
	Err  error
}

func (e *Error) Error() string {
	where := fmt.Sprintf("provider %q", e.Provider)
	if e.Socket != "" {
		where += " at " + e.Socket
	}
	return where + ": " + e.Err.Error()
}

func (e *Error) Unwrap() error { return e.Err }
