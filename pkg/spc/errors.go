package spc

import "strings"

// FieldError is one problem with one parameter, e.g.
// `objects[2].objectAlias: "../x" must be a relative path inside the mount`.
type FieldError struct {
	// Field is the parameter: "keyvaultName", "objects", "objects[2].objectAlias".
	Field string
	// Detail says what is wrong with it.
	Detail string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Detail }

// ValidationError is every problem Parse found in a set of parameters. The
// CSI layer answers it with InvalidArgument.
type ValidationError struct {
	Errors []*FieldError
}

// Error joins the problems with "; ", in the order Parse found them.
func (e *ValidationError) Error() string {
	msgs := make([]string, len(e.Errors))
	for i, fe := range e.Errors {
		msgs[i] = fe.Error()
	}
	return "invalid SecretProviderClass parameters: " + strings.Join(msgs, "; ")
}

// Unwrap lets errors.As find each FieldError.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		errs[i] = fe
	}
	return errs
}

// problems collects FieldErrors.
type problems []*FieldError

func (p *problems) add(field, detail string) {
	*p = append(*p, &FieldError{Field: field, Detail: detail})
}

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Errors: p}
}
