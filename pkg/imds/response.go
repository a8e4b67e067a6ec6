package imds

import (
	"unicode/utf8"
)

// The answers are built by appending to a byte slice rather than with
// encoding/json: the cache-hit path then allocates nothing for its body.
// The output is byte-for-byte what json.Marshal gives for the same strings.
// Token answers are in answer.go.

// appendError appends IMDS's error shape.
func appendError(b []byte, code, desc string) []byte {
	b = append(b, `{"error":`...)
	b = appendJSONString(b, code)
	b = append(b, `,"error_description":`...)
	b = appendJSONString(b, desc)
	return append(b, '}')
}

const hexDigits = "0123456789abcdef"

// maybeEscapeIn8 reports whether any of the eight bytes of w might need
// escaping or decoding; false means certainly none does. It flags every
// byte below '-' (control characters, '"', '&' and some harmless ones),
// '<', '>' (and '='), '\\', and non-ASCII, using the exact word-at-a-time
// tests for a byte below n (n <= 128, after excluding high bytes) and for a
// zero byte.
func maybeEscapeIn8(w string) bool {
	x := uint64(w[0]) | uint64(w[1])<<8 | uint64(w[2])<<16 | uint64(w[3])<<24 |
		uint64(w[4])<<32 | uint64(w[5])<<40 | uint64(w[6])<<48 | uint64(w[7])<<56
	const (
		ones = 0x0101010101010101
		high = 0x8080808080808080
	)
	lt := (x - ones*'-') &^ x           // high bit set where a byte < '-'
	y := (x | ones*0x02) ^ (ones * '>') // zero where a byte is '<' or '>'
	z := x ^ (ones * '\\')              // zero where a byte is '\\'
	return (x|lt|((y-ones)&^y)|((z-ones)&^z))&high != 0
}

// appendJSONString appends s as a JSON string, escaped as encoding/json
// does: quotes, backslashes, control characters, <, >, &, U+2028, U+2029,
// and invalid UTF-8 (as U+FFFD).
func appendJSONString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Skip eight bytes at a time where none needs escaping: access
		// tokens (base64url and dots) never do, and they are most of the
		// answer.
		if i+8 <= len(s) && !maybeEscapeIn8(s[i:i+8]) {
			i += 8
			continue
		}
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= ' ' && c != '"' && c != '\\' && c != '<' && c != '>' && c != '&' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
