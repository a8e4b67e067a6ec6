// Package emulator is an offline stand-in for the parts of Azure that kvnode
// talks to: Entra ID (login.microsoftonline.com and the sovereign authorities),
// Key Vault (<vault>.vault.azure.net and the sovereign suffixes) and the
// instance metadata service (169.254.169.254), and, once EnableTokenProxy is
// called, AKS identity binding's token proxy (a CONNECT to
// kubernetes.default.svc.cluster.local with the cluster's proxy SNI name;
// see tokenproxy.go).
//
// It is reached the way a client reaches Azure through a corporate proxy: the
// emulator is an HTTP forward proxy. HTTPS requests arrive as CONNECT tunnels,
// which it terminates with a certificate minted for the requested host and
// signed by a CA it writes to a file; plain-http IMDS requests arrive in
// absolute form. A client needs only HTTPS_PROXY, HTTP_PROXY and SSL_CERT_FILE
// (see Env) and keeps Azure's real host names and its SDK's default options.
//
// Tests seed and inspect it through the Go API on *Emulator; the azure-emulator
// command exposes the same operations as a config file and a control HTTP
// surface under /control/ on the proxy's own address.
package emulator
