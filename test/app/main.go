// Command app is the workload the test cluster's pods run: an ordinary Go
// program on the Azure SDK with its default options, as a user's would be.
// It reads one Key Vault secret with a managed-identity or default
// credential (through nmi in a cluster) and one file from a kvdriver
// volume, and prints what it got: each value's length and SHA-256, never the
// value itself.
//
// Its environment says what to read:
//
//	KEYVAULT_URL   the vault, such as https://myvault.vault.azure.net/
//	SECRET_NAME    the secret to read from it (with KEYVAULT_URL)
//	SECRET_FILE    a file to read, such as a secret kvdriver mounted
//	SECRET_ENV     an environment variable to read, such as one a pod
//	               takes from a Secret kvdriver synced
//	CREDENTIAL     "managed-identity" (default) or "default"
//	INTERVAL       read again every INTERVAL (a Go duration) until SIGTERM;
//	               empty: read once and exit, non-zero on failure
//
// AZURE_CLIENT_ID and the SDK's other variables work as they do for any
// SDK program. Output, one line per read:
//
//	secret <name> version <version>: <n> bytes sha256 <hex>
//	file <path>: <n> bytes sha256 <hex>
//	env <name>: <n> bytes sha256 <hex>
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"path"
	"syscall"
	"time"

	"github.com/Azure/azure-sdk-for-go/sdk/azcore"
	"github.com/Azure/azure-sdk-for-go/sdk/azidentity"
	"github.com/Azure/azure-sdk-for-go/sdk/security/keyvault/azsecrets"
)

// Config is what the environment asks the app to read.
type Config struct {
	VaultURL   string
	SecretName string
	SecretFile string
	SecretEnv  string
	Credential string
	Interval   time.Duration
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "app:", err)
		os.Exit(1)
	}
}

func run() error {
	cfg, err := configFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	r, err := newReader(cfg)
	if err != nil {
		return err
	}
	if cfg.Interval == 0 {
		return r.readAll(ctx)
	}
	for {
		if err := r.readAll(ctx); err != nil {
			fmt.Println("error:", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(cfg.Interval):
		}
	}
}

func configFromEnv(getenv func(string) string) (Config, error) {
	cfg := Config{
		VaultURL:   getenv("KEYVAULT_URL"),
		SecretName: getenv("SECRET_NAME"),
		SecretFile: getenv("SECRET_FILE"),
		SecretEnv:  getenv("SECRET_ENV"),
		Credential: getenv("CREDENTIAL"),
	}
	if cfg.Credential == "" {
		cfg.Credential = "managed-identity"
	}
	if cfg.Credential != "managed-identity" && cfg.Credential != "default" {
		return cfg, fmt.Errorf("CREDENTIAL %q: want managed-identity or default", cfg.Credential)
	}
	if (cfg.VaultURL == "") != (cfg.SecretName == "") {
		return cfg, errors.New("KEYVAULT_URL and SECRET_NAME go together")
	}
	if cfg.SecretName == "" && cfg.SecretFile == "" && cfg.SecretEnv == "" {
		return cfg, errors.New("nothing to read: set KEYVAULT_URL and SECRET_NAME, SECRET_FILE or SECRET_ENV")
	}
	if s := getenv("INTERVAL"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return cfg, fmt.Errorf("INTERVAL %q: want a positive Go duration", s)
		}
		cfg.Interval = d
	}
	return cfg, nil
}

type reader struct {
	cfg     Config
	secrets *azsecrets.Client
}

func newReader(cfg Config) (*reader, error) {
	r := &reader{cfg: cfg}
	if cfg.SecretName == "" {
		return r, nil
	}
	var cred azcore.TokenCredential
	var err error
	if cfg.Credential == "default" {
		cred, err = azidentity.NewDefaultAzureCredential(nil)
	} else {
		cred, err = azidentity.NewManagedIdentityCredential(nil)
	}
	if err != nil {
		return nil, fmt.Errorf("credential: %w", err)
	}
	r.secrets, err = azsecrets.NewClient(cfg.VaultURL, cred, nil)
	if err != nil {
		return nil, fmt.Errorf("key vault client: %w", err)
	}
	return r, nil
}

// readAll reads what the config names and prints one line for each.
func (r *reader) readAll(ctx context.Context) error {
	var errs []error
	if r.secrets != nil {
		resp, err := r.secrets.GetSecret(ctx, r.cfg.SecretName, "", nil)
		if err != nil {
			errs = append(errs, fmt.Errorf("secret %s: %w", r.cfg.SecretName, err))
		} else {
			value := ""
			if resp.Value != nil {
				value = *resp.Value
			}
			version := ""
			if resp.ID != nil {
				version = resp.ID.Version()
			}
			fmt.Printf("secret %s version %s: %s\n", r.cfg.SecretName, version, digest([]byte(value)))
		}
	}
	if r.cfg.SecretFile != "" {
		b, err := os.ReadFile(r.cfg.SecretFile)
		if err != nil {
			errs = append(errs, err)
		} else {
			fmt.Printf("file %s: %s\n", path.Clean(r.cfg.SecretFile), digest(b))
		}
	}
	if name := r.cfg.SecretEnv; name != "" {
		if v, ok := os.LookupEnv(name); ok {
			fmt.Printf("env %s: %s\n", name, digest([]byte(v)))
		} else {
			errs = append(errs, fmt.Errorf("env %s is not set", name))
		}
	}
	return errors.Join(errs...)
}

// digest describes b without revealing it.
func digest(b []byte) string {
	sum := sha256.Sum256(b)
	return fmt.Sprintf("%d bytes sha256 %s", len(b), hex.EncodeToString(sum[:]))
}
