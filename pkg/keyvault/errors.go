package keyvault

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
)

// Kind classifies a fetch error so that a front door can answer with the
// right status (the CSI node server maps each Kind to one gRPC code).
type Kind int

// Error kinds. The comments give the gRPC code a CSI server should use.
const (
	// KindUnknown is an error this package did not produce. (Unknown)
	KindUnknown Kind = iota
	// KindInvalid: the request or an object's options are wrong, or Key Vault
	// refused the request as malformed (400). (InvalidArgument)
	KindInvalid
	// KindNotFound: the object or version does not exist (404), or the
	// vault does not exist: its host name does not resolve, or the proxy or
	// front end answers 421 Misdirected Request (it serves no such host).
	// (NotFound)
	KindNotFound
	// KindPermissionDenied: the identity may not read the object (403), or
	// the object (version) is disabled. (PermissionDenied)
	KindPermissionDenied
	// KindThrottled: Key Vault throttled the identity or vault (429).
	// (ResourceExhausted)
	KindThrottled
	// KindUnavailable: a transport error, a timeout of one try, or a 5xx.
	// (Unavailable)
	KindUnavailable
	// KindAuthentication: the credential could not get a token (Entra ID
	// refused it, or the identity endpoint failed), or Key Vault refused the
	// token (401). Entra ID answering 429 or 5xx is KindThrottled or
	// KindUnavailable. (Unauthenticated or PermissionDenied)
	KindAuthentication
	// KindConversion: the object was fetched but cannot be written as asked:
	// a value that is not valid base64 or hex, an unsupported key type, a PFX
	// that does not decode. (FailedPrecondition)
	KindConversion
	// KindCanceled: the caller's context ended. (DeadlineExceeded or
	// Canceled, as the context error says)
	KindCanceled
)

func (k Kind) String() string {
	switch k {
	case KindUnknown:
		return "Unknown"
	case KindInvalid:
		return "Invalid"
	case KindNotFound:
		return "NotFound"
	case KindPermissionDenied:
		return "PermissionDenied"
	case KindThrottled:
		return "Throttled"
	case KindUnavailable:
		return "Unavailable"
	case KindAuthentication:
		return "Authentication"
	case KindConversion:
		return "Conversion"
	case KindCanceled:
		return "Canceled"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Error is the error Fetch returns for one object. It unwraps to the cause,
// so errors.As still finds an *azcore.ResponseError or an
// *azidentity.AuthenticationFailedError. Its message names the object type,
// vault and object, never a value or a token.
type Error struct {
	Kind Kind
	// Op is what failed: "fetch", "list versions of", "convert"; or, for
	// a request that names no object, "fetch from vault".
	Op    string
	Type  ObjectType
	Vault string
	// Object is the object's name (and "@version" for a specific version).
	Object string
	Err    error
}

func (e *Error) Error() string {
	if e.Object == "" {
		return fmt.Sprintf("%s %s: %s", e.Op, e.Vault, describe(e.Err, e.Vault))
	}
	return fmt.Sprintf("%s %s %s/%s: %s", e.Op, e.Type, e.Vault, e.Object, describe(e.Err, e.Vault))
}

func (e *Error) Unwrap() error { return e.Err }

// describe is a one-line account of err. An *azcore.ResponseError prints
// the whole response; this keeps the status and Key Vault's error code. A
// vault that does not exist (its host does not resolve, or a 421 for it) is
// said so in words, with the parameters to check.
func describe(err error, vault string) string {
	var af *azidentity.AuthenticationFailedError
	if errors.As(err, &af) {
		return err.Error()
	}
	noVault := func(why string) string {
		return fmt.Sprintf("no vault named %q in this cloud: %s (check keyvaultName and cloudName)", vault, why)
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		code := re.ErrorCode
		if code == "" {
			code = http.StatusText(re.StatusCode)
		}
		answer := fmt.Sprintf("Key Vault answered %d (%s)", re.StatusCode, code)
		if re.StatusCode == http.StatusMisdirectedRequest {
			return noVault(answer)
		}
		return answer
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound && vault != "" && strings.HasPrefix(strings.ToLower(dns.Name), strings.ToLower(vault)+".") {
		return noVault(fmt.Sprintf("host %s does not resolve", dns.Name))
	}
	return err.Error()
}

// Classify returns the Kind of err: the Kind of an *Error in its chain, or
// the kind its cause suggests.
func Classify(err error) Kind {
	if err == nil {
		return KindUnknown
	}
	var e *Error
	if errors.As(err, &e) && e.Kind != KindUnknown {
		return e.Kind
	}
	return classifyCause(err)
}

// classifyCause looks at an error from the Azure SDK.
func classifyCause(err error) Kind {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		// A try timeout (RetryOptions.TryTimeout) also ends in
		// DeadlineExceeded; Fetch tells the two apart by its own context.
		return KindCanceled
	}
	var af *azidentity.AuthenticationFailedError
	if errors.As(err, &af) {
		// azidentity reports Entra ID throttling or failing as an
		// authentication failure too: an outage, not a refused credential.
		// Without a response Entra ID never answered (connection refused,
		// reset, DNS, TLS, a timeout): azidentity keeps only the message of
		// the transport's error, so the missing response is what says so.
		// A refusal always comes with Entra ID's answer.
		if af.RawResponse == nil {
			return KindUnavailable
		}
		switch s := af.RawResponse.StatusCode; {
		case s == http.StatusTooManyRequests:
			return KindThrottled
		case s >= 500:
			return KindUnavailable
		}
		return KindAuthentication
	}
	// A credential of our own (pod identity through nmi) says so itself.
	var refused interface{ AuthenticationFailed() bool }
	if errors.As(err, &refused) && refused.AuthenticationFailed() {
		return KindAuthentication
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return classifyStatus(re.StatusCode)
	}
	var te *ThrottledError
	if errors.As(err, &te) {
		return KindThrottled
	}
	var dns *net.DNSError
	if errors.As(err, &dns) && dns.IsNotFound {
		return KindNotFound
	}
	// Whatever else the pipeline returns is a transport failure.
	return KindUnavailable
}

func classifyStatus(status int) Kind {
	switch {
	case status == http.StatusUnauthorized:
		return KindAuthentication
	case status == http.StatusForbidden:
		return KindPermissionDenied
	case status == http.StatusNotFound:
		return KindNotFound
	case status == http.StatusMisdirectedRequest:
		// The host is not served where the request went: no such vault.
		// Azure itself has no DNS name for a missing vault; a proxy or
		// front end that serves no such host answers 421, which the SDK
		// does not retry.
		return KindNotFound
	case status == http.StatusTooManyRequests:
		return KindThrottled
	case status == http.StatusRequestTimeout || status >= 500:
		return KindUnavailable
	case status >= 400:
		return KindInvalid
	}
	return KindUnavailable
}

// IsNotFound reports whether err is an Error of KindNotFound.
func IsNotFound(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Kind == KindNotFound
}
