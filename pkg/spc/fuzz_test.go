package spc

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/kvnode/kvnode/pkg/keyvault"
)

// FuzzParse feeds the parameters a SecretProviderClass carries. Whatever
// the input: no panic; a refusal is a ValidationError whose every entry
// names a field and a problem; an accepted class's objects obey the rules
// Fetch applies, and written back as an objects parameter they parse to the
// same objects with no problem.
func FuzzParse(f *testing.F) {
	f.Add("kvname", "tid", "", "array:\n  - |\n    objectName: secret1\n    objectType: secret\n")
	f.Add("kv-1", "72f988bf-86f1-41af-91ab-2d7cd011db47", "c1",
		"array:\n  - |\n    objectName: web\n    objectType: secret\n    objectAlias: a//b\n    filePermission: 0600\n  - |\n    objectName: web\n    objectType: cert\n")
	f.Add("1kv", "t", "", "array: []")
	f.Fuzz(func(t *testing.T, vault, tenant, clientID, objects string) {
		cfg, err := Parse(map[string]string{ParamKeyVaultName: vault, ParamTenantIDLegacy: tenant, ParamClientID: clientID, ParamObjects: objects})
		if err != nil {
			verr, ok := err.(*ValidationError)
			if !ok || len(verr.Errors) == 0 {
				t.Fatalf("refusal is not a ValidationError with errors: %T %v", err, err)
			}
			for _, fe := range append(verr.Errors, verr.Warnings...) {
				if fe.Field == "" || fe.Detail == "" {
					t.Fatalf("problem without field or detail: %+v", fe)
				}
			}
			return
		}
		for _, w := range cfg.Warnings {
			if w.Field == "" || w.Detail == "" {
				t.Fatalf("warning without field or detail: %+v", w)
			}
		}
		if len(cfg.Objects) == 0 {
			return
		}
		if err := keyvault.ValidateObjects(cfg.Objects); err != nil {
			t.Fatalf("accepted objects Fetch refuses: %v", err)
		}
		again, err := Parse(map[string]string{ParamKeyVaultName: cfg.KeyVaultName, ParamTenantIDLegacy: cfg.TenantID, ParamObjects: objectsOf(t, cfg.Objects)})
		if err != nil {
			t.Fatalf("round trip refused: %v", err)
		}
		if len(again.Objects) != len(cfg.Objects) {
			t.Fatalf("round trip: %d objects, want %d", len(again.Objects), len(cfg.Objects))
		}
		for i := range cfg.Objects {
			if again.Objects[i] != cfg.Objects[i] {
				t.Fatalf("round trip: object %d is %+v, want %+v", i, again.Objects[i], cfg.Objects[i])
			}
		}
	})
}

// objectsOf writes objects as an objects parameter.
func objectsOf(t *testing.T, objs []keyvault.Object) string {
	var array []string
	for _, o := range objs {
		m := map[string]string{keyvault.FieldName: o.Name, keyvault.FieldType: string(o.Type)}
		set := func(k, v string) {
			if v != "" {
				m[k] = v
			}
		}
		set(keyvault.FieldVersion, o.Version)
		set(keyvault.FieldAlias, o.Alias)
		set(keyvault.FieldFormat, string(o.Format))
		set(keyvault.FieldEncoding, string(o.Encoding))
		if o.VersionHistory != 0 {
			set(keyvault.FieldVersionHistory, strings.TrimSpace(yamlInt(o.VersionHistory)))
		}
		if o.FileMode != 0 {
			set(keyvault.FieldFilePermission, "0"+strings.TrimLeft(octal(uint32(o.FileMode)), "0"))
		}
		b, err := yaml.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		array = append(array, string(b))
	}
	b, err := yaml.Marshal(map[string][]string{"array": array})
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func yamlInt(n int) string {
	b, _ := yaml.Marshal(n)
	return string(b)
}

func octal(n uint32) string {
	const digits = "01234567"
	if n == 0 {
		return "0"
	}
	var b []byte
	for ; n > 0; n /= 8 {
		b = append([]byte{digits[n%8]}, b...)
	}
	return string(b)
}
