// Command azure-emulator runs kvnode's offline Azure emulator (Entra ID, Key
// Vault and IMDS) as an HTTP forward proxy, seeded from a YAML config file and
// controllable over HTTP under /control/ on the same address.
//
// It prints the shell export lines a client needs (HTTPS_PROXY, HTTP_PROXY,
// SSL_CERT_FILE, ...) and a summary of what it serves, then runs until
// SIGINT or SIGTERM.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/kvnode/kvnode/test/emulator"
)

// config is the command line.
type config struct {
	listen        string
	dir           string
	configFile    string
	tokenLifetime time.Duration
	quiet         bool
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "azure-emulator:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg config
	fs := flag.NewFlagSet("azure-emulator", flag.ContinueOnError)
	fs.StringVar(&cfg.listen, "listen", "127.0.0.1:8443", "proxy (and control API) listen address")
	fs.StringVar(&cfg.dir, "dir", "", "directory for ca.crt (default: a new temporary directory)")
	fs.StringVar(&cfg.configFile, "config", "", "YAML file seeding applications, identities, issuers and vaults")
	fs.DurationVar(&cfg.tokenLifetime, "token-lifetime", time.Hour, "life of the access tokens Entra ID and IMDS issue")
	fs.BoolVar(&cfg.quiet, "quiet", false, "do not log each request to stderr")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if cfg.tokenLifetime <= 0 {
		return errors.New("--token-lifetime must be positive")
	}
	var seed emulator.Config
	if cfg.configFile != "" {
		var err error
		if seed, err = emulator.LoadConfig(cfg.configFile); err != nil {
			return err
		}
	}
	if cfg.dir == "" {
		dir, err := os.MkdirTemp("", "azure-emulator-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		cfg.dir = dir
	}

	logger := log.New(os.Stderr, "azure-emulator: ", log.LstdFlags|log.Lmicroseconds)
	logf := logger.Printf
	if cfg.quiet {
		logf = func(string, ...any) {}
	}
	e, err := emulator.Start(emulator.Options{Dir: cfg.dir, Addr: cfg.listen, TokenLifetime: cfg.tokenLifetime, Logf: logf})
	if err != nil {
		return err
	}
	defer e.Close()
	if err := e.ApplyConfig(seed); err != nil {
		return fmt.Errorf("apply %s: %w", cfg.configFile, err)
	}
	printSummary(os.Stdout, e, seed)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	<-ctx.Done()
	logger.Printf("shutting down")
	return nil
}

// printSummary writes the export lines for a POSIX shell, then what the
// emulator serves as shell comments, so the output can be sourced as is.
func printSummary(w io.Writer, e *emulator.Emulator, seed emulator.Config) {
	for _, kv := range e.Env() {
		k, v, _ := strings.Cut(kv, "=")
		fmt.Fprintf(w, "export %s=%s\n", k, shellQuote(v))
	}
	fmt.Fprintf(w, "# kvnode Azure emulator on %s; control API: %s/control/\n", e.Addr(), e.ProxyURL())
	for _, a := range seed.Applications {
		if p, ok := e.Principal(a.ClientID); ok {
			fmt.Fprintf(w, "# application  tenant=%s client=%s object=%s federated=%d\n", p.TenantID, p.ClientID, p.ObjectID, len(p.Federated))
		}
	}
	for _, id := range e.AssignedIdentities() {
		if p, ok := e.Principal(id); ok {
			fmt.Fprintf(w, "# managed identity  tenant=%s client=%s object=%s resource=%s\n", p.TenantID, p.ClientID, p.ObjectID, p.ResourceID)
		}
	}
	for _, ti := range seed.TrustedIssuers {
		fmt.Fprintf(w, "# trusted issuer  %s\n", ti.Issuer)
	}
	for _, v := range seed.Vaults {
		suffix := emulator.Clouds[0].VaultSuffix
		for _, c := range emulator.Clouds {
			if strings.EqualFold(c.Name, v.Cloud) {
				suffix = c.VaultSuffix
			}
		}
		fmt.Fprintf(w, "# vault  https://%s.%s/ secrets=%d keys=%d certificates=%d grants=%d\n",
			strings.ToLower(v.Name), suffix, len(v.Secrets), len(v.Keys), len(v.Certificates), len(v.Grants))
	}
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
