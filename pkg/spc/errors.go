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
	// Warnings are the tolerated mistakes found next to the errors; they
	// often explain an error (a misspelt key next to a field "must be set").
	Warnings []*FieldError
}

// Error joins the problems with "; ", in the order Parse found them, and
// then the warnings.
func (e *ValidationError) Error() string {
	msg := "invalid SecretProviderClass parameters: " + Warnings(e.Errors)
	if len(e.Warnings) > 0 {
		msg += "; also: " + Warnings(e.Warnings)
	}
	return msg
}

// Unwrap lets errors.As find each FieldError.
func (e *ValidationError) Unwrap() []error {
	errs := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		errs[i] = fe
	}
	return errs
}

// problems collects what Parse finds: errors refuse the parameters,
// warnings are mistakes the upstream provider tolerates.
type problems struct {
	errors, warnings []*FieldError
}

func (p *problems) add(field, detail string) {
	p.errors = append(p.errors, &FieldError{Field: field, Detail: detail})
}

func (p *problems) warn(field, detail string) {
	p.warnings = append(p.warnings, &FieldError{Field: field, Detail: detail})
}

func (p *problems) err() error {
	if len(p.errors) == 0 {
		return nil
	}
	return &ValidationError{Errors: p.errors, Warnings: p.warnings}
}

// Warnings joins warnings as ValidationError joins errors, for a log line
// or an event: "objects[0].filePermision: is not an object field; ...".
func Warnings(warnings []*FieldError) string {
	msgs := make([]string, len(warnings))
	for i, w := range warnings {
		msgs[i] = w.Error()
	}
	return strings.Join(msgs, "; ")
}
