package secretsync

import "fmt"

// FieldError says why a Secret described by a SecretProviderClass's
// spec.secretObjects cannot be built: a bad setting, or a mounted file that
// does not hold what the Secret's type needs. Nothing was written for that
// Secret. Its text names the field and never holds a secret value.
type FieldError struct {
	// Field is the path below spec, e.g. secretObjects[0].data[1].objectName.
	Field string
	// Secret is the Secret's name, when the entry names one.
	Secret string
	// Reason says what is wrong.
	Reason string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Reason }

// WriteError is an API request for a Secret that failed: the API server
// refused it (RBAC, the admission policy, validation, an immutable type) or
// could not be reached. The next Sync for that Secret tries again.
type WriteError struct {
	// Field is the entry of spec.secretObjects, e.g. secretObjects[0].
	Field string
	// Namespace and Secret name the Secret.
	Namespace, Secret string
	// Op is what failed: "apply" (the Secret's content), "add owner", or
	// "wait for another sync of the Secret" (the context ended first).
	Op string
	// Err is the client's error (an *apierrors.StatusError when the API
	// server answered).
	Err error
}

func (e *WriteError) Error() string {
	return fmt.Sprintf("%s: Secret %s/%s: %s: %v", e.Field, e.Namespace, e.Secret, e.Op, e.Err)
}

func (e *WriteError) Unwrap() error { return e.Err }

// Errors returns the errors Sync joined, one per Secret that failed, in the
// order of spec.secretObjects: each a *FieldError or a *WriteError. It
// returns nil for nil and a one-element slice for any other error.
func Errors(err error) []error {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		return joined.Unwrap()
	}
	return []error{err}
}
