package emulator

import (
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// The control surface: JSON over HTTP under /control/ on the proxy's own
// address, so that tests written in any language, and the demo, can seed and
// inspect the emulator the way Go tests use the *Emulator methods. Request
// bodies take the shapes of Config's parts; errors are {"error":"..."} naming
// the offending field.
//
//	GET    /control/                                  this list
//	GET    /control/env                               proxy URL, CA file, environment
//	GET    /control/ca.crt                            the CA certificate (PEM)
//	POST   /control/config                            a whole Config (JSON or YAML)
//	POST   /control/applications                      ApplicationConfig
//	POST   /control/applications/{clientId}/federated-credentials  FederatedCredentialConfig
//	POST   /control/trusted-issuers                   TrustedIssuerConfig
//	GET    /control/managed-identities                identities assigned to the node
//	POST   /control/managed-identities                ManagedIdentityConfig
//	POST   /control/managed-identities/{clientId}/assign
//	POST   /control/managed-identities/{clientId}/unassign
//	POST   /control/vaults                            VaultConfig (with contents)
//	POST   /control/vaults/{vault}/secrets            SecretConfig -> {"version"}
//	POST   /control/vaults/{vault}/keys               KeyConfig -> {"version"}
//	POST   /control/vaults/{vault}/certificates       CertificateConfig -> {"version","chain"}
//	POST   /control/vaults/{vault}/grants             GrantConfig
//	POST   /control/vaults/{vault}/disable            {"kind","name","version"}
//	PUT    /control/vaults/{vault}/throttle           ThrottleConfig
//	POST   /control/imds/faults                       {"status","count","latency","drop"}
//	DELETE /control/imds/faults
//	POST   /control/entra/faults                      {"status","count","latency","drop"}
//	DELETE /control/entra/faults
//	POST   /control/keyvault/faults                   {"status","count","latency","drop"} (every vault)
//	DELETE /control/keyvault/faults
//	GET    /control/requests?service=&vault=&object=&identity=&method=&status=&since=
//	DELETE /control/requests

// controlRoute is one control operation.
type controlRoute struct {
	pattern string
	handle  func(e *Emulator, w http.ResponseWriter, r *http.Request) error
}

// controlRoutes returns the control surface's routes, in the order of the
// list above.
func controlRoutes() []controlRoute {
	return []controlRoute{
		{"GET /control/{$}", (*Emulator).controlIndex},
		{"GET /control/env", (*Emulator).controlEnv},
		{"GET /control/ca.crt", (*Emulator).controlCA},
		{"POST /control/config", (*Emulator).controlConfig},
		{"POST /control/applications", (*Emulator).controlAddApplication},
		{"POST /control/applications/{clientId}/federated-credentials", (*Emulator).controlAddFederated},
		{"POST /control/trusted-issuers", (*Emulator).controlTrustIssuer},
		{"GET /control/managed-identities", (*Emulator).controlListIdentities},
		{"POST /control/managed-identities", (*Emulator).controlAddIdentity},
		{"POST /control/managed-identities/{clientId}/assign", (*Emulator).controlAssign},
		{"POST /control/managed-identities/{clientId}/unassign", (*Emulator).controlUnassign},
		{"POST /control/vaults", (*Emulator).controlAddVault},
		{"POST /control/vaults/{vault}/secrets", (*Emulator).controlSetSecret},
		{"POST /control/vaults/{vault}/keys", (*Emulator).controlCreateKey},
		{"POST /control/vaults/{vault}/certificates", (*Emulator).controlCreateCertificate},
		{"POST /control/vaults/{vault}/grants", (*Emulator).controlGrant},
		{"POST /control/vaults/{vault}/disable", (*Emulator).controlDisable},
		{"PUT /control/vaults/{vault}/throttle", (*Emulator).controlThrottle},
		{"POST /control/imds/faults", injectFault((*Emulator).InjectIMDSFault)},
		{"DELETE /control/imds/faults", clearFaults((*Emulator).ClearIMDSFaults)},
		{"POST /control/entra/faults", injectFault((*Emulator).InjectEntraFault)},
		{"DELETE /control/entra/faults", clearFaults((*Emulator).ClearEntraFaults)},
		{"POST /control/keyvault/faults", injectFault((*Emulator).InjectVaultFault)},
		{"DELETE /control/keyvault/faults", clearFaults((*Emulator).ClearVaultFaults)},
		{"GET /control/requests", (*Emulator).controlRequests},
		{"DELETE /control/requests", (*Emulator).controlResetRequests},
	}
}

// serveControl answers a control request. The mux is built per request: the
// control surface is not a hot path, and it keeps the routes in one table.
func (e *Emulator) serveControl(w http.ResponseWriter, r *http.Request) {
	mux := http.NewServeMux()
	for _, rt := range controlRoutes() {
		handle := rt.handle
		mux.HandleFunc(rt.pattern, func(w http.ResponseWriter, r *http.Request) {
			if err := handle(e, w, r); err != nil {
				writeControlError(w, err)
			}
		})
	}
	mux.HandleFunc("/control/", func(w http.ResponseWriter, r *http.Request) {
		writeControlError(w, controlError{status: http.StatusNotFound, msg: fmt.Sprintf("no control operation %s %s; GET /control/ lists them", r.Method, r.URL.Path)})
	})
	r.Body = http.MaxBytesReader(w, r.Body, 8<<20)
	mux.ServeHTTP(w, r)
	e.logf("control %s %s", r.Method, r.URL.Path)
}

// controlError is an error with the HTTP status to answer it with.
type controlError struct {
	status int
	msg    string
}

func (c controlError) Error() string { return c.msg }

func badRequest(format string, args ...any) error {
	return controlError{status: http.StatusBadRequest, msg: fmt.Sprintf(format, args...)}
}

func writeControlError(w http.ResponseWriter, err error) {
	status := http.StatusBadRequest
	var ce controlError
	switch {
	case errors.As(err, &ce):
		status = ce.status
	case errors.Is(err, ErrVaultNotFound), errors.Is(err, ErrObjectNotFound):
		status = http.StatusNotFound
	}
	writeJSON(w, status, map[string]string{"error": strings.TrimPrefix(err.Error(), ".")})
}

// decodeBody reads a JSON body into v, refusing unknown fields and trailing
// data, and names the field at fault in its error.
func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var te *json.UnmarshalTypeError
		var se *json.SyntaxError
		switch {
		case errors.Is(err, io.EOF):
			return badRequest("request body: empty; want a JSON object")
		case errors.As(err, &te):
			if te.Type == reflect.TypeFor[Duration]() {
				return badRequest("field %q: want a duration string such as \"10s\", got %s", te.Field, te.Value)
			}
			return badRequest("field %q: want a JSON %s, got %s", te.Field, te.Type, te.Value)
		case errors.As(err, &se):
			return badRequest("request body: invalid JSON at offset %d: %v", se.Offset, err)
		case strings.HasPrefix(err.Error(), "json: unknown field "):
			return badRequest("unknown field %s", strings.TrimPrefix(err.Error(), "json: unknown field "))
		}
		return badRequest("request body: %v", err)
	}
	if dec.More() {
		return badRequest("request body: data after the JSON object")
	}
	return nil
}

func (e *Emulator) controlIndex(w http.ResponseWriter, _ *http.Request) error {
	var ops []string
	for _, rt := range controlRoutes() {
		ops = append(ops, strings.Replace(rt.pattern, "{$}", "", 1))
	}
	writeJSON(w, http.StatusOK, map[string]any{"operations": ops})
	return nil
}

func (e *Emulator) controlEnv(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, map[string]any{"proxyUrl": e.ProxyURL(), "caFile": e.CAFile(), "env": e.Env()})
	return nil
}

func (e *Emulator) controlCA(w http.ResponseWriter, _ *http.Request) error {
	w.Header().Set("Content-Type", "application/x-pem-file")
	_, err := w.Write(e.CACertPEM())
	return err
}

func (e *Emulator) controlConfig(w http.ResponseWriter, r *http.Request) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return badRequest("request body: %v", err)
	}
	var cfg Config
	if err := yaml.UnmarshalStrict(b, &cfg); err != nil {
		return badRequest("request body: %v", err)
	}
	if err := e.ApplyConfig(cfg); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// principalJSON is a principal as the control surface shows it: never its
// secret.
type principalJSON struct {
	TenantID   string `json:"tenantId"`
	ClientID   string `json:"clientId"`
	ObjectID   string `json:"objectId"`
	ResourceID string `json:"resourceId,omitempty"`
}

func principalView(p Principal) principalJSON {
	return principalJSON{TenantID: p.TenantID, ClientID: p.ClientID, ObjectID: p.ObjectID, ResourceID: p.ResourceID}
}

func (e *Emulator) controlAddApplication(w http.ResponseWriter, r *http.Request) error {
	var ac ApplicationConfig
	if err := decodeBody(r, &ac); err != nil {
		return err
	}
	p, err := e.applyApplication(ac)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, principalView(p))
	return nil
}

func (e *Emulator) controlAddFederated(w http.ResponseWriter, r *http.Request) error {
	var fc FederatedCredentialConfig
	if err := decodeBody(r, &fc); err != nil {
		return err
	}
	fcs, err := federatedCredentials([]FederatedCredentialConfig{fc})
	if err != nil {
		return badRequest("%s", strings.TrimPrefix(err.Error(), ".federatedCredentials[0]."))
	}
	if err := e.AddFederatedCredential(r.PathValue("clientId"), fcs[0]); err != nil {
		return controlError{status: http.StatusNotFound, msg: err.Error()}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (e *Emulator) controlTrustIssuer(w http.ResponseWriter, r *http.Request) error {
	var ic TrustedIssuerConfig
	if err := decodeBody(r, &ic); err != nil {
		return err
	}
	if err := e.applyTrustedIssuer(ic); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (e *Emulator) controlListIdentities(w http.ResponseWriter, _ *http.Request) error {
	out := []principalJSON{}
	for _, id := range e.AssignedIdentities() {
		if p, ok := e.dir.lookup(id); ok {
			out = append(out, principalView(p))
		}
	}
	writeJSON(w, http.StatusOK, map[string]any{"identities": out})
	return nil
}

func (e *Emulator) controlAddIdentity(w http.ResponseWriter, r *http.Request) error {
	var mc ManagedIdentityConfig
	if err := decodeBody(r, &mc); err != nil {
		return err
	}
	p, err := e.applyManagedIdentity(mc)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, principalView(p))
	return nil
}

func (e *Emulator) controlAssign(w http.ResponseWriter, r *http.Request) error {
	if err := e.AssignIdentity(r.PathValue("clientId")); err != nil {
		return controlError{status: http.StatusNotFound, msg: err.Error()}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (e *Emulator) controlUnassign(w http.ResponseWriter, r *http.Request) error {
	e.UnassignIdentity(r.PathValue("clientId"))
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (e *Emulator) controlAddVault(w http.ResponseWriter, r *http.Request) error {
	var vc VaultConfig
	if err := decodeBody(r, &vc); err != nil {
		return err
	}
	if err := e.applyVault(vc); err != nil {
		return err
	}
	w.WriteHeader(http.StatusCreated)
	return nil
}

func (e *Emulator) controlSetSecret(w http.ResponseWriter, r *http.Request) error {
	var sc SecretConfig
	if err := decodeBody(r, &sc); err != nil {
		return err
	}
	if sc.Name == "" {
		return badRequest("name: required")
	}
	v, err := e.SetSecret(r.PathValue("vault"), sc.Name, sc.Value, SecretOptions{ContentType: sc.ContentType, Enabled: sc.Enabled, Tags: sc.Tags})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, map[string]string{"version": v})
	return nil
}

func (e *Emulator) controlCreateKey(w http.ResponseWriter, r *http.Request) error {
	var kc KeyConfig
	if err := decodeBody(r, &kc); err != nil {
		return err
	}
	if kc.Name == "" {
		return badRequest("name: required")
	}
	v, err := e.CreateKey(r.PathValue("vault"), kc.Name, KeyOptions{Type: kc.Type, Size: kc.Size, Curve: kc.Curve})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, map[string]string{"version": v})
	return nil
}

func (e *Emulator) controlCreateCertificate(w http.ResponseWriter, r *http.Request) error {
	var cc CertificateConfig
	if err := decodeBody(r, &cc); err != nil {
		return err
	}
	if cc.Name == "" {
		return badRequest("name: required")
	}
	ic, err := e.CreateCertificate(r.PathValue("vault"), cc.Name, cc.options())
	if err != nil {
		return err
	}
	chain := make([]string, 0, len(ic.Chain))
	for _, c := range ic.Chain {
		chain = append(chain, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	writeJSON(w, http.StatusCreated, map[string]any{"version": ic.Version, "chain": chain})
	return nil
}

func (e *Emulator) controlGrant(w http.ResponseWriter, r *http.Request) error {
	var gc GrantConfig
	if err := decodeBody(r, &gc); err != nil {
		return err
	}
	oid, err := e.grantObjectID(gc)
	if err != nil {
		return badRequest("%s", strings.TrimPrefix(err.Error(), "."))
	}
	if err := e.Grant(r.PathValue("vault"), oid, gc.Permissions...); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (e *Emulator) controlDisable(w http.ResponseWriter, r *http.Request) error {
	var d struct {
		Kind    string `json:"kind"`
		Name    string `json:"name"`
		Version string `json:"version"`
	}
	if err := decodeBody(r, &d); err != nil {
		return err
	}
	for _, f := range []struct{ name, v string }{{"kind", d.Kind}, {"name", d.Name}, {"version", d.Version}} {
		if f.v == "" {
			return badRequest("%s: required", f.name)
		}
	}
	if err := e.DisableVersion(r.PathValue("vault"), d.Kind, d.Name, d.Version); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (e *Emulator) controlThrottle(w http.ResponseWriter, r *http.Request) error {
	var tc ThrottleConfig
	if err := decodeBody(r, &tc); err != nil {
		return err
	}
	if tc.Limit < 0 {
		return badRequest("limit: must not be negative")
	}
	if err := e.SetThrottle(r.PathValue("vault"), tc.Limit, tc.Window.Duration); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// faultJSON is a Fault on the wire, its latency a duration string.
type faultJSON struct {
	Status  int      `json:"status,omitempty"`
	Count   int      `json:"count,omitempty"`
	Latency Duration `json:"latency,omitempty"`
	Drop    bool     `json:"drop,omitempty"`
}

func decodeFault(r *http.Request) (Fault, error) {
	var fj faultJSON
	if err := decodeBody(r, &fj); err != nil {
		return Fault{}, err
	}
	f := Fault{Status: fj.Status, Count: fj.Count, Latency: fj.Latency.Duration, Drop: fj.Drop}
	if err := f.validate(); err != nil {
		return Fault{}, badRequest("%v", err)
	}
	return f, nil
}

// injectFault is the control operation that queues a fault with inject.
func injectFault(inject func(*Emulator, Fault) error) func(*Emulator, http.ResponseWriter, *http.Request) error {
	return func(e *Emulator, w http.ResponseWriter, r *http.Request) error {
		f, err := decodeFault(r)
		if err != nil {
			return err
		}
		if err := inject(e, f); err != nil {
			return badRequest("%v", err)
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

// clearFaults is the control operation that removes a service's faults.
func clearFaults(clear func(*Emulator)) func(*Emulator, http.ResponseWriter, *http.Request) error {
	return func(e *Emulator, w http.ResponseWriter, _ *http.Request) error {
		clear(e)
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
}

// controlRequests lists the request log, filtered by the query parameters.
func (e *Emulator) controlRequests(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	for name := range q {
		switch name {
		case "service", "vault", "object", "identity", "method", "status", "since":
		default:
			return badRequest("query parameter %q: unknown; use service, vault, object, identity, method, status or since", name)
		}
	}
	f := RequestFilter{Service: Service(q.Get("service")), Vault: q.Get("vault"), Object: q.Get("object"),
		Identity: q.Get("identity"), Method: q.Get("method")}
	switch f.Service {
	case "", ServiceEntra, ServiceKeyVault, ServiceIMDS, ServiceUnknown:
	default:
		return badRequest("query parameter \"service\": %q is not one of entra, keyvault, imds, unknown", f.Service)
	}
	if s := q.Get("status"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return badRequest("query parameter \"status\": %q is not a number", s)
		}
		f.Status = n
	}
	if s := q.Get("since"); s != "" {
		t, err := time.Parse(time.RFC3339Nano, s)
		if err != nil {
			return badRequest("query parameter \"since\": %q is not an RFC 3339 time", s)
		}
		f.Since = t
	}
	out := e.Requests(f)
	if out == nil {
		out = []Request{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"count": len(out), "requests": out})
	return nil
}

func (e *Emulator) controlResetRequests(w http.ResponseWriter, _ *http.Request) error {
	e.ResetRequests()
	w.WriteHeader(http.StatusNoContent)
	return nil
}
