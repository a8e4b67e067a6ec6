// Command sdkclient is a small, unmodified Azure SDK for Go client that kvnode's
// tests run as a child process against the Azure emulator. It uses azidentity
// and the Key Vault clients with their default options, so what it proves is
// what any Go program built on the SDK would see; only its environment
// (HTTPS_PROXY, HTTP_PROXY, SSL_CERT_FILE, AZURE_*) points it at the emulator.
//
// Usage:
//
//	sdkclient -cred KIND [credential flags] OP [op flags]
//
// KIND is client-secret, client-assertion, workload-identity, managed-identity
// or default. OP is token, secret-get, secret-versions, key-get or cert-get.
// The result is one JSON document on stdout; a failure prints
// {"error":{...}} and exits 1.
package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/cloud"
	"github.com/Azure/azure-sdk-for-go/sdk/azcore/policy"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azcertificates"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azkeys"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// Failure is what sdkclient prints when the operation fails.
type Failure struct {
	// Kind is "auth" for an azidentity authentication failure, "response" for
	// a service error response, "usage" for bad arguments, "other" otherwise.
	Kind    string `json:"kind"`
	Status  int    `json:"status,omitempty"`
	Code    string `json:"code,omitempty"`
	Message string `json:"message"`
}

type credFlags struct {
	kind          string
	cloud         string
	tenant        string
	clientID      string
	secret        string
	assertionFile string
	miClientID    string
	miObjectID    string
	miResourceID  string
	timeout       time.Duration
}

func main() {
	out, err := run(os.Args[1:])
	enc := json.NewEncoder(os.Stdout)
	if err != nil {
		_ = enc.Encode(map[string]Failure{"error": describe(err)})
		os.Exit(1)
	}
	_ = enc.Encode(out)
}

type usageError struct{ error }

func run(args []string) (any, error) {
	var cf credFlags
	fs := flag.NewFlagSet("sdkclient", flag.ContinueOnError)
	fs.StringVar(&cf.kind, "cred", "default", "credential: client-secret, client-assertion, workload-identity, managed-identity, default")
	fs.StringVar(&cf.cloud, "cloud", "AzurePublicCloud", "AzurePublicCloud, AzureUSGovernmentCloud or AzureChinaCloud")
	fs.StringVar(&cf.tenant, "tenant", "", "tenant ID")
	fs.StringVar(&cf.clientID, "client-id", "", "application (client) ID")
	fs.StringVar(&cf.secret, "secret", "", "client secret")
	fs.StringVar(&cf.assertionFile, "assertion-file", "", "file holding the client assertion (a JWT)")
	fs.StringVar(&cf.miClientID, "mi-client-id", "", "managed identity client ID")
	fs.StringVar(&cf.miObjectID, "mi-object-id", "", "managed identity object ID")
	fs.StringVar(&cf.miResourceID, "mi-resource-id", "", "managed identity resource ID")
	fs.DurationVar(&cf.timeout, "timeout", 60*time.Second, "overall deadline")
	if err := fs.Parse(args); err != nil {
		return nil, usageError{err}
	}
	if fs.NArg() < 1 {
		return nil, usageError{errors.New("missing operation")}
	}
	ctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
	defer cancel()

	c, err := cloudConfig(cf.cloud)
	if err != nil {
		return nil, usageError{err}
	}
	cred, err := credential(cf, c)
	if err != nil {
		return nil, err
	}
	op, opArgs := fs.Arg(0), fs.Args()[1:]
	ofs := flag.NewFlagSet(op, flag.ContinueOnError)
	scope := ofs.String("scope", "", "token scope")
	vault := ofs.String("vault", "", "vault URL")
	name := ofs.String("name", "", "object name")
	version := ofs.String("version", "", "object version (empty = latest)")
	if err := ofs.Parse(opArgs); err != nil {
		return nil, usageError{err}
	}
	copts := azcore.ClientOptions{Cloud: c}
	switch op {
	case "token":
		tok, err := cred.GetToken(ctx, policy.TokenRequestOptions{Scopes: []string{*scope}})
		if err != nil {
			return nil, err
		}
		claims, err := unverifiedClaims(tok.Token)
		if err != nil {
			return nil, err
		}
		return map[string]any{"token": map[string]any{"expires_on": tok.ExpiresOn.UTC().Format(time.RFC3339), "claims": claims}}, nil
	case "secret-get":
		cl, err := azsecrets.NewClient(*vault, cred, &azsecrets.ClientOptions{ClientOptions: copts})
		if err != nil {
			return nil, err
		}
		resp, err := cl.GetSecret(ctx, *name, *version, nil)
		if err != nil {
			return nil, err
		}
		return map[string]any{"secret": resp.Secret}, nil
	case "secret-versions":
		cl, err := azsecrets.NewClient(*vault, cred, &azsecrets.ClientOptions{ClientOptions: copts})
		if err != nil {
			return nil, err
		}
		var items []*azsecrets.SecretProperties
		pager := cl.NewListSecretPropertiesVersionsPager(*name, nil)
		pages := 0
		for pager.More() {
			page, err := pager.NextPage(ctx)
			if err != nil {
				return nil, err
			}
			pages++
			items = append(items, page.Value...)
		}
		return map[string]any{"versions": items, "pages": pages}, nil
	case "key-get":
		cl, err := azkeys.NewClient(*vault, cred, &azkeys.ClientOptions{ClientOptions: copts})
		if err != nil {
			return nil, err
		}
		resp, err := cl.GetKey(ctx, *name, *version, nil)
		if err != nil {
			return nil, err
		}
		return map[string]any{"key": resp.KeyBundle}, nil
	case "cert-get":
		cl, err := azcertificates.NewClient(*vault, cred, &azcertificates.ClientOptions{ClientOptions: copts})
		if err != nil {
			return nil, err
		}
		resp, err := cl.GetCertificate(ctx, *name, *version, nil)
		if err != nil {
			return nil, err
		}
		return map[string]any{"certificate": resp.Certificate}, nil
	default:
		return nil, usageError{fmt.Errorf("unknown operation %q", op)}
	}
}

func cloudConfig(name string) (cloud.Configuration, error) {
	switch name {
	case "AzurePublicCloud", "":
		return cloud.AzurePublic, nil
	case "AzureUSGovernmentCloud":
		return cloud.AzureGovernment, nil
	case "AzureChinaCloud":
		return cloud.AzureChina, nil
	}
	return cloud.Configuration{}, fmt.Errorf("unknown cloud %q", name)
}

func credential(cf credFlags, c cloud.Configuration) (azcore.TokenCredential, error) {
	opts := azcore.ClientOptions{Cloud: c}
	switch cf.kind {
	case "client-secret":
		return azidentity.NewClientSecretCredential(cf.tenant, cf.clientID, cf.secret,
			&azidentity.ClientSecretCredentialOptions{ClientOptions: opts})
	case "client-assertion":
		file := cf.assertionFile
		return azidentity.NewClientAssertionCredential(cf.tenant, cf.clientID,
			func(context.Context) (string, error) {
				b, err := os.ReadFile(file)
				return strings.TrimSpace(string(b)), err
			}, &azidentity.ClientAssertionCredentialOptions{ClientOptions: opts})
	case "workload-identity":
		// Reads AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE
		// and AZURE_AUTHORITY_HOST, as in a pod with workload identity.
		return azidentity.NewWorkloadIdentityCredential(&azidentity.WorkloadIdentityCredentialOptions{ClientOptions: opts})
	case "managed-identity":
		o := &azidentity.ManagedIdentityCredentialOptions{ClientOptions: opts}
		switch {
		case cf.miClientID != "":
			o.ID = azidentity.ClientID(cf.miClientID)
		case cf.miObjectID != "":
			o.ID = azidentity.ObjectID(cf.miObjectID)
		case cf.miResourceID != "":
			o.ID = azidentity.ResourceID(cf.miResourceID)
		}
		return azidentity.NewManagedIdentityCredential(o)
	case "default":
		return azidentity.NewDefaultAzureCredential(&azidentity.DefaultAzureCredentialOptions{ClientOptions: opts})
	}
	return nil, usageError{fmt.Errorf("unknown credential kind %q", cf.kind)}
}

// unverifiedClaims decodes a JWT's payload without checking it: the test
// compares the claims with what it registered in the emulator.
func unverifiedClaims(token string) (map[string]any, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("access token is not a JWT")
	}
	payload, err := base64.RawURLEncoding.DecodeString(parts[1])
	if err != nil {
		return nil, fmt.Errorf("access token payload: %w", err)
	}
	var claims map[string]any
	if err := json.Unmarshal(payload, &claims); err != nil {
		return nil, fmt.Errorf("access token payload: %w", err)
	}
	return claims, nil
}

func describe(err error) Failure {
	var ue usageError
	if errors.As(err, &ue) {
		return Failure{Kind: "usage", Message: err.Error()}
	}
	var af *azidentity.AuthenticationFailedError
	if errors.As(err, &af) {
		f := Failure{Kind: "auth", Message: err.Error()}
		if af.RawResponse != nil {
			f.Status = af.RawResponse.StatusCode
		}
		return f
	}
	var re *azcore.ResponseError
	if errors.As(err, &re) {
		return Failure{Kind: "response", Status: re.StatusCode, Code: re.ErrorCode, Message: err.Error()}
	}
	return Failure{Kind: "other", Message: err.Error()}
}
