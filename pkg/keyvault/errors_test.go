package keyvault

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"testing"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/stretchr/testify/assert"
)

func TestClassify(t *testing.T) {
	status := func(code int) error { return &azcore.ResponseError{StatusCode: code, ErrorCode: "X"} }
	cases := []struct {
		name string
		err  error
		want Kind
	}{
		{"nil", nil, KindUnknown},
		{"403", status(http.StatusForbidden), KindPermissionDenied},
		{"404", status(http.StatusNotFound), KindNotFound},
		{"429", status(http.StatusTooManyRequests), KindThrottled},
		{"500", status(http.StatusInternalServerError), KindUnavailable},
		{"503 wrapped", fmt.Errorf("get: %w", status(http.StatusServiceUnavailable)), KindUnavailable},
		{"408", status(http.StatusRequestTimeout), KindUnavailable},
		{"401", status(http.StatusUnauthorized), KindAuthentication},
		{"400", status(http.StatusBadRequest), KindInvalid},
		{"Entra ID never answered", fmt.Errorf("x: %w", &azidentity.AuthenticationFailedError{}), KindUnavailable},
		{"Entra ID refused", fmt.Errorf("x: %w", &azidentity.AuthenticationFailedError{RawResponse: &http.Response{StatusCode: http.StatusUnauthorized}}), KindAuthentication},
		{"Entra ID throttling", fmt.Errorf("x: %w", &azidentity.AuthenticationFailedError{RawResponse: &http.Response{StatusCode: http.StatusTooManyRequests}}), KindThrottled},
		{"Entra ID down", fmt.Errorf("x: %w", &azidentity.AuthenticationFailedError{RawResponse: &http.Response{StatusCode: http.StatusServiceUnavailable}}), KindUnavailable},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), KindCanceled},
		{"canceled", context.Canceled, KindCanceled},
		{"no such host", &net.DNSError{Err: "no such host", Name: "kv.vault.azure.net", IsNotFound: true}, KindNotFound},
		{"connection refused", &net.OpError{Op: "dial", Err: errors.New("connection refused")}, KindUnavailable},
		{"an *Error's kind wins", &Error{Kind: KindConversion, Op: "convert", Type: TypeSecret, Vault: "kv", Object: "s", Err: status(http.StatusForbidden)}, KindConversion},
		{"an *Error without kind: its cause", fmt.Errorf("outer: %w", &Error{Op: "fetch", Type: TypeKey, Vault: "kv", Object: "k", Err: status(http.StatusNotFound)}), KindNotFound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			assert.Equal(t, tc.want, Classify(tc.err), "got %s", Classify(tc.err))
		})
	}
}

func TestErrorMessageAndUnwrap(t *testing.T) {
	re := &azcore.ResponseError{StatusCode: http.StatusNotFound, ErrorCode: "SecretNotFound"}
	err := &Error{Kind: KindNotFound, Op: "fetch", Type: TypeSecret, Vault: "kv1", Object: "db-password", Err: re}
	assert.Equal(t, "fetch secret kv1/db-password: Key Vault answered 404 (SecretNotFound)", err.Error())
	var got *azcore.ResponseError
	assert.True(t, errors.As(fmt.Errorf("mount: %w", err), &got))
	assert.Same(t, re, got)

	noCode := &Error{Op: "fetch", Type: TypeKey, Vault: "kv1", Object: "k", Err: &azcore.ResponseError{StatusCode: 502}}
	assert.Equal(t, "fetch key kv1/k: Key Vault answered 502 (Bad Gateway)", noCode.Error())
	vault := &Error{Kind: KindInvalid, Op: "fetch from vault", Vault: "kv1", Err: errors.New("no objects")}
	assert.Equal(t, "fetch from vault kv1: no objects", vault.Error())
	assert.Equal(t, "PermissionDenied", KindPermissionDenied.String())
	assert.Equal(t, "Kind(42)", Kind(42).String())
}
