package redact

import (
	"fmt"

	"github.com/go-logr/logr"
)

// Logger returns a logger that writes through l with s applied to the
// message and to every value that prints as text (strings, errors,
// Stringers, byte slices); other values (numbers, durations, booleans) pass
// unchanged. Put it into a request's context at the edge, where the
// request's credentials are known, so that nothing logged below can carry
// them.
func Logger(l logr.Logger, s *Scrubber) logr.Logger {
	next := l.GetSink()
	if next == nil {
		return l
	}
	// The sink below reports its caller's file and line: one frame more
	// now, this sink's method.
	if cd, ok := next.(logr.CallDepthLogSink); ok {
		next = cd.WithCallDepth(1)
	}
	return logr.New(&sink{next: next, s: s})
}

type sink struct {
	next logr.LogSink
	s    *Scrubber
}

var _ logr.CallDepthLogSink = (*sink)(nil)

// Init does nothing: the sink below was initialised by the logger it came
// from, and Logger has added this sink's frame to its call depth.
func (k *sink) Init(logr.RuntimeInfo) {}

func (k *sink) Enabled(level int) bool { return k.next.Enabled(level) }

func (k *sink) Info(level int, msg string, kv ...any) {
	k.next.Info(level, k.s.String(msg), k.values(kv)...)
}

func (k *sink) Error(err error, msg string, kv ...any) {
	if err != nil {
		err = scrubbedError{msg: k.s.String(err.Error())}
	}
	k.next.Error(err, k.s.String(msg), k.values(kv)...)
}

func (k *sink) WithValues(kv ...any) logr.LogSink {
	return &sink{next: k.next.WithValues(k.values(kv)...), s: k.s}
}

func (k *sink) WithName(name string) logr.LogSink {
	return &sink{next: k.next.WithName(name), s: k.s}
}

func (k *sink) WithCallDepth(depth int) logr.LogSink {
	if cd, ok := k.next.(logr.CallDepthLogSink); ok {
		return &sink{next: cd.WithCallDepth(depth), s: k.s}
	}
	return k
}

// values scrubs the values (odd positions) of a key/value list.
func (k *sink) values(kv []any) []any {
	out := make([]any, len(kv))
	copy(out, kv)
	for i := 1; i < len(out); i += 2 {
		switch v := out[i].(type) {
		case string:
			out[i] = k.s.String(v)
		case []byte:
			out[i] = k.s.String(string(v))
		case error:
			out[i] = scrubbedError{msg: k.s.String(v.Error())}
		case fmt.Stringer:
			out[i] = k.s.String(stringOf(v))
		}
	}
	return out
}

// scrubbedError is an error whose text has been scrubbed.
type scrubbedError struct{ msg string }

func (e scrubbedError) Error() string { return e.msg }

// stringOf is v.String(), or a marker when that panics (a nil pointer
// whose String method does not allow for one).
func stringOf(v fmt.Stringer) (s string) {
	defer func() {
		if recover() != nil {
			s = "<nil>"
		}
	}()
	return v.String()
}
