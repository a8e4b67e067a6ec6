package flexvolume

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"strings"
	"testing"

	"github.com/kvnode/kvnode/pkg/keyvault"
)

// FuzzParseOptions feeds the JSON options argument kubelet passes to a
// mount, with a client secret in it. Whatever the input: no panic; a
// refusal is an OptionsError that names each option and never carries the
// secret, plain or base64; an accepted mount's objects obey the rules Fetch
// applies.
func FuzzParseOptions(f *testing.F) {
	f.Add(`{"keyvaultname":"testkeyvault","keyvaultobjectnames":"secret1;key1","keyvaultobjecttypes":"secret;key","tenantid":"testtenant"}`, "a-client-secret")
	f.Add(`{"keyvaultname":"kv","keyvaultobjectname":"s","keyvaultobjecttype":"secret","keyvaultobjectaliases":";x","usepodidentity":"yes"}`, "s3cr3t!!")
	f.Add(`{"kubernetes.io/secret/clientsecret": 1}`, "another secret")
	f.Fuzz(func(t *testing.T, raw, secret string) {
		var opts map[string]any
		if json.Unmarshal([]byte(raw), &opts) == nil && opts != nil && len(strings.TrimSpace(secret)) >= 8 {
			opts["kubernetes.io/secret/clientid"] = base64.StdEncoding.EncodeToString([]byte("client-id"))
			opts["kubernetes.io/secret/clientsecret"] = base64.StdEncoding.EncodeToString([]byte(secret))
			b, _ := json.Marshal(opts)
			raw = string(b)
		} else {
			secret = ""
		}
		for _, strict := range []bool{false, true} {
			v, err := ParseOptions(raw, strict)
			if err != nil {
				oe, ok := err.(*OptionsError)
				if !ok || len(oe.Problems) == 0 {
					t.Fatalf("refusal is not an OptionsError with problems: %T %v", err, err)
				}
				for _, p := range oe.Problems {
					if p.Option == "" || p.Detail == "" {
						t.Fatalf("problem without option or detail: %+v", p)
					}
				}
				if secret != "" && (strings.Contains(err.Error(), strings.TrimSpace(secret)) ||
					strings.Contains(err.Error(), base64.StdEncoding.EncodeToString([]byte(secret)))) {
					t.Fatalf("the client secret reached the error: %v", err)
				}
				continue
			}
			if len(v.Objects) > 0 {
				if err := keyvault.ValidateObjects(v.Objects); err != nil {
					t.Fatalf("accepted objects Fetch refuses: %v", err)
				}
			}
		}
	})
}

// FuzzDriverArgs runs any argv through the driver with a publisher that
// must not be reached unless the call is a valid mount: no panic, always a
// result kubelet can read, and never the secret in its message.
func FuzzDriverArgs(f *testing.F) {
	f.Add("mount", "/var/lib/kubelet/pods/u/volumes/azure~kv/test", `{"keyvaultname":"kv","kubernetes.io/secret/clientsecret":"`+b64("planted-secret-1")+`"}`)
	f.Add("unmount", "relative", "")
	f.Add("init", "", "")
	f.Add("getvolumename", "{}", "x")
	f.Fuzz(func(t *testing.T, call, a1, a2 string) {
		pub := &recordingPublisher{}
		res := NewDriver(pub, Options{}).Run(context.Background(), []string{call, a1, a2})
		switch res.Status {
		case StatusSuccess, StatusFailure, StatusNotSupported:
		default:
			t.Fatalf("status %q", res.Status)
		}
		// What the call passes as the Secret's value never comes back.
		var opts map[string]any
		if json.Unmarshal([]byte(a2), &opts) != nil {
			return
		}
		v, _ := opts["kubernetes.io/secret/clientsecret"].(string)
		plain, _ := base64.StdEncoding.DecodeString(strings.Join(strings.Fields(v), ""))
		for _, secret := range []string{v, strings.TrimSpace(string(plain))} {
			if len(secret) >= 8 && strings.Contains(res.Message, secret) {
				t.Fatalf("secret %q in the result: %s", secret, res.Message)
			}
		}
	})
}
