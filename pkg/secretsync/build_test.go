package secretsync

import (
	"errors"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"

	"github.com/kvnode/kvnode/pkg/spc"
)

// plantedValue is a secret value the tests look for in every error text.
const plantedValue = "s3cr3t-planted-value"

func data(pairs ...string) []spc.SecretObjectData {
	var out []spc.SecretObjectData
	for i := 0; i < len(pairs); i += 2 {
		out = append(out, spc.SecretObjectData{ObjectName: pairs[i], Key: pairs[i+1]})
	}
	return out
}

func TestBuildUpstreamExamples(t *testing.T) {
	c := newChain(t, "RSA")
	dockerConfig := `{"auths":{"registry.example.com":{"auth":"dXNlcjpwYXNz"}}}`
	files := map[string][]byte{
		"secretalias":      []byte(plantedValue),
		"tls-cert":         c.bundle(t),
		"dockerconfigjson": []byte(dockerConfig),
		"history/0":        []byte("newest"),
		"history/1":        []byte("older"),
	}
	for _, tc := range []struct {
		name        string
		obj         spc.SecretObject
		wantType    corev1.SecretType
		wantLabels  map[string]string
		wantAnnots  map[string]string
		wantData    map[string][]byte
		description string
	}{
		{
			name: "env var: Opaque with labels (sync-with-k8s-secrets.md, set-env-var.md)",
			obj: spc.SecretObject{SecretName: "foosecret", Type: "Opaque", Labels: map[string]string{"environment": "test"},
				Data: data("secretalias", "username")},
			wantType:   corev1.SecretTypeOpaque,
			wantLabels: map[string]string{"environment": "test", ManagedLabel: "true"},
			wantData:   map[string][]byte{"username": []byte(plantedValue)},
		},
		{
			name:       "ingress: kubernetes.io/tls from a certificate-backed secret (ingress-tls.md)",
			obj:        spc.SecretObject{SecretName: "ingress-tls-csi", Type: "kubernetes.io/tls", Data: data("tls-cert", "tls.key", "tls-cert", "tls.crt")},
			wantType:   corev1.SecretTypeTLS,
			wantLabels: map[string]string{ManagedLabel: "true"},
			wantData:   map[string][]byte{"tls.key": c.keyPEM(t), "tls.crt": c.certsPEM()},
		},
		{
			name:       "kubernetes.io/dockerconfigjson (dockerconfigjson_synck8s example)",
			obj:        spc.SecretObject{SecretName: "dockerconfig", Type: "kubernetes.io/dockerconfigjson", Data: data("dockerconfigjson", ".dockerconfigjson")},
			wantType:   corev1.SecretTypeDockerConfigJson,
			wantLabels: map[string]string{ManagedLabel: "true"},
			wantData:   map[string][]byte{".dockerconfigjson": []byte(dockerConfig)},
		},
		{
			name:       "a version of a version history (sync-multiple-versions.md)",
			obj:        spc.SecretObject{SecretName: "history", Type: "Opaque", Data: data("history/0", "current", "history/1", "previous")},
			wantType:   corev1.SecretTypeOpaque,
			wantLabels: map[string]string{ManagedLabel: "true"},
			wantData:   map[string][]byte{"current": []byte("newest"), "previous": []byte("older")},
		},
		{
			name: "spaces trimmed, annotations kept, the managed label forced to true",
			obj: spc.SecretObject{SecretName: " foosecret ", Type: " Opaque", Annotations: map[string]string{"example.com/owner": "team-a"},
				Labels: map[string]string{ManagedLabel: "false"}, Data: data(" secretalias ", " username ")},
			wantType:   corev1.SecretTypeOpaque,
			wantLabels: map[string]string{ManagedLabel: "true"},
			wantAnnots: map[string]string{"example.com/owner": "team-a"},
			wantData:   map[string][]byte{"username": []byte(plantedValue)},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for range 2 { // building is pure: the same input, the same Secret
				got, errs := build([]spc.SecretObject{tc.obj}, files, DefaultTypes())
				require.NoError(t, errors.Join(errs...))
				d := got[0]
				require.NoError(t, d.render())
				assert.Equal(t, strings.TrimSpace(tc.obj.SecretName), d.name)
				assert.Equal(t, tc.wantType, d.typ)
				assert.Equal(t, tc.wantLabels, d.labels)
				assert.Equal(t, tc.wantAnnots, d.annotations)
				assert.Equal(t, tc.wantData, d.data)
			}
		})
	}
}

func TestInputSumChangesWithEveryInput(t *testing.T) {
	base := func() *desired {
		return &desired{name: "s", typ: corev1.SecretTypeOpaque, labels: map[string]string{"a": "b"},
			annotations: map[string]string{"c": "d"}, items: []dataItem{{key: "k", file: "f", raw: []byte("v")}, {key: "l", file: "f", raw: []byte("w")}}}
	}
	sum := inputSum(base())
	assert.Equal(t, sum, inputSum(base()), "deterministic")
	reordered := base()
	reordered.items[0], reordered.items[1] = reordered.items[1], reordered.items[0]
	assert.Equal(t, sum, inputSum(reordered), "the order of data[] does not matter")
	for name, change := range map[string]func(*desired){
		"name":          func(d *desired) { d.name = "t" },
		"type":          func(d *desired) { d.typ = corev1.SecretTypeBasicAuth },
		"label value":   func(d *desired) { d.labels["a"] = "c" },
		"label moved":   func(d *desired) { d.labels = map[string]string{}; d.annotations["a"] = "b" },
		"annotation":    func(d *desired) { d.annotations["c"] = "e" },
		"file content":  func(d *desired) { d.items[0].raw = []byte("x") },
		"key":           func(d *desired) { d.items[0].key = "m" },
		"data boundary": func(d *desired) { d.items[0].raw, d.items[1].raw = []byte("vw"), nil },
	} {
		d := base()
		change(d)
		assert.NotEqual(t, sum, inputSum(d), name)
	}
}

func TestBuildBadConfiguration(t *testing.T) {
	c := newChain(t, "RSA")
	files := map[string][]byte{"secret1": []byte(plantedValue), "cert": c.bundle(t), "json": []byte(plantedValue)}
	opaque := func(d ...string) spc.SecretObject {
		return spc.SecretObject{SecretName: "s", Type: "Opaque", Data: data(d...)}
	}
	for _, tc := range []struct {
		name    string
		obj     spc.SecretObject
		field   string
		message string
	}{
		{"no secretName", spc.SecretObject{Type: "Opaque", Data: data("secret1", "k")}, "secretObjects[0].secretName", "required"},
		{"blank secretName", spc.SecretObject{SecretName: "  ", Type: "Opaque", Data: data("secret1", "k")}, "secretObjects[0].secretName", "required"},
		{"secretName not a DNS subdomain", spc.SecretObject{SecretName: "Foo_Secret", Type: "Opaque", Data: data("secret1", "k")}, "secretObjects[0].secretName", `"Foo_Secret" is not a valid Secret name`},
		{"no type", spc.SecretObject{SecretName: "s", Data: data("secret1", "k")}, "secretObjects[0].type", "required"},
		{"service-account-token", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/service-account-token", Data: data("secret1", "token")}, "secretObjects[0].type", `"kubernetes.io/service-account-token" is not a type kvdriver syncs`},
		{"bootstrap token", spc.SecretObject{SecretName: "s", Type: "bootstrap.kubernetes.io/token", Data: data("secret1", "token-id")}, "secretObjects[0].type", "is not a type kvdriver syncs"},
		{"custom type", spc.SecretObject{SecretName: "s", Type: "helm.sh/release.v1", Data: data("secret1", "release")}, "secretObjects[0].type", "is not a type kvdriver syncs"},
		{"bad label key", spc.SecretObject{SecretName: "s", Type: "Opaque", Labels: map[string]string{"a b": "x"}, Data: data("secret1", "k")}, "secretObjects[0].labels", `"a b" is not a valid label key`},
		{"bad label value", spc.SecretObject{SecretName: "s", Type: "Opaque", Labels: map[string]string{"app": "a b"}, Data: data("secret1", "k")}, "secretObjects[0].labels[app]", `"a b" is not a valid label value`},
		{"bad annotation key", spc.SecretObject{SecretName: "s", Type: "Opaque", Annotations: map[string]string{"/x": "y"}, Data: data("secret1", "k")}, "secretObjects[0].annotations", `"/x" is not a valid annotation key`},
		{"no data", spc.SecretObject{SecretName: "s", Type: "Opaque"}, "secretObjects[0].data", "required"},
		{"no objectName", opaque("", "k"), "secretObjects[0].data[0].objectName", "required"},
		{"no key", opaque("secret1", " "), "secretObjects[0].data[0].key", "required"},
		{"key not a Secret key", opaque("secret1", "k", "secret1", "my key!"), "secretObjects[0].data[1].key", `"my key!" is not a valid Secret key`},
		{"key twice", opaque("secret1", "k", "cert", "k"), "secretObjects[0].data[1].key", `"k" is also the key of data[0]`},
		{"objectName not mounted", opaque("secret1", "k", "secret2", "other"), "secretObjects[0].data[1].objectName", `"secret2" is not a file of the volume`},
		{"tls with another key", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/tls", Data: data("cert", "tls.key", "cert", "ca.crt")}, "secretObjects[0].data[1].key", "takes only tls.key and tls.crt"},
		{"tls without tls.crt", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/tls", Data: data("cert", "tls.key")}, "secretObjects[0].data", "needs the keys tls.crt and tls.key; tls.crt is missing"},
		{"tls from a plain secret", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/tls", Data: data("secret1", "tls.key", "cert", "tls.crt")}, "secretObjects[0].data[0].objectName", `file "secret1" is neither PEM nor a PKCS#12 archive`},
		{"dockerconfigjson not JSON", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/dockerconfigjson", Data: data("json", ".dockerconfigjson")}, "secretObjects[0].data[0].objectName", `file "json" is not valid JSON`},
		{"dockerconfigjson without its key", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/dockerconfigjson", Data: data("json", "config.json")}, "secretObjects[0].data", "needs the key .dockerconfigjson"},
		{"basic-auth without username or password", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/basic-auth", Data: data("secret1", "user")}, "secretObjects[0].data", "needs the key username or password"},
		{"ssh-auth without its key", spc.SecretObject{SecretName: "s", Type: "kubernetes.io/ssh-auth", Data: data("secret1", "key")}, "secretObjects[0].data", "needs the key ssh-privatekey"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, errs := build([]spc.SecretObject{tc.obj}, files, DefaultTypes())
			err := errs[0]
			if got[0] != nil { // settings fine: the files' content is checked when it is built
				err = got[0].render()
				assert.Nil(t, got[0].data)
			}
			var fe *FieldError
			require.ErrorAs(t, err, &fe)
			assert.Equal(t, tc.field, fe.Field)
			assert.Contains(t, fe.Error(), tc.message)
			assert.True(t, strings.HasPrefix(fe.Error(), tc.field+": "), "the message starts with the field: %s", fe)
			assert.NotContains(t, fe.Error(), plantedValue)
		})
	}
}

func TestBuildEntriesAreIndependent(t *testing.T) {
	files := map[string][]byte{"secret1": []byte("v")}
	got, errs := build([]spc.SecretObject{
		{SecretName: "a", Type: "Opaque", Data: data("missing", "k")},
		{SecretName: "b", Type: "Opaque", Data: data("secret1", "k")},
		{SecretName: "b", Type: "Opaque", Data: data("secret1", "other")},
	}, files, DefaultTypes())
	require.Len(t, got, 3)
	require.Len(t, errs, 3)
	assert.Nil(t, got[0])
	assert.Equal(t, "secretObjects[0].data[0].objectName", errs[0].(*FieldError).Field)
	require.NotNil(t, got[1], "a bad entry does not stop a good one")
	assert.NoError(t, errs[1])
	assert.Nil(t, got[2])
	assert.Equal(t, `secretObjects[2].secretName: "b" is also the name of secretObjects[1]; each Secret is described once`, errs[2].Error())
}

func TestBuildListsSomeMountedFiles(t *testing.T) {
	files := map[string][]byte{}
	for _, n := range []string{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l"} {
		files[n] = nil
	}
	_, errs := build([]spc.SecretObject{{SecretName: "s", Type: "Opaque", Data: data("z", "k")}}, files, DefaultTypes())
	assert.Contains(t, errs[0].Error(), `the volume has "a", "b", "c", "d", "e", "f", "g", "h", "i", "j" and 2 more`)
}

func TestBuildRefusesMoreThanASecretHolds(t *testing.T) {
	files := map[string][]byte{"a": make([]byte, corev1.MaxSecretSize/2+1), "b": make([]byte, corev1.MaxSecretSize/2)}
	got, errs := build([]spc.SecretObject{{SecretName: "s", Type: "Opaque", Data: data("a", "a", "b", "b")}}, files, DefaultTypes())
	require.NoError(t, errs[0])
	assert.EqualError(t, got[0].render(), "secretObjects[0].data: the Secret would hold 1048577 bytes; Kubernetes takes at most 1048576")
}
