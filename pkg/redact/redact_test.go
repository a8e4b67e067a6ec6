package redact

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"

	csipb "github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"k8s.io/klog/v2/textlogger"
)

// Values planted in requests; none may be printed.
const (
	plantedToken  = "eyJhbGciOiJSUzI1NiIsImtpZCI6InBsYW50ZWQifQ.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6YXBwIn0.cGxhbnRlZC1zaWduYXR1cmU"
	plantedSecret = "planted-client-secret-value"
	// opaqueToken is a token that is not JWT-shaped: only its key gives it away.
	opaqueToken = "opaque-planted-token-0123456789"
)

func tokensJSON(token string) string {
	return `{"api://AzureADTokenExchange":{"token":"` + token + `","expirationTimestamp":"2030-01-01T00:00:00Z"}}`
}

func publishRequest() *csipb.NodePublishVolumeRequest {
	return &csipb.NodePublishVolumeRequest{
		VolumeId:   "csi-123",
		TargetPath: "/var/lib/kubelet/pods/123/volumes/kubernetes.io~csi/secrets/mount",
		Readonly:   true,
		Secrets:    map[string]string{"clientid": "client-id-value", "clientsecret": plantedSecret},
		VolumeContext: map[string]string{
			"secretProviderClass":                      "my-class",
			"csi.storage.k8s.io/pod.name":              "app-0",
			"csi.storage.k8s.io/serviceAccount.tokens": tokensJSON(opaqueToken),
			"somethingElse":                            "Bearer " + plantedToken,
			"dbPassword":                               "hunter2-hunter2",
		},
	}
}

func TestRequestStripsSecretsAndVolumeContextCredentials(t *testing.T) {
	req := publishRequest()
	out := fmt.Sprint(Request(req))
	for _, planted := range []string{plantedSecret, opaqueToken, plantedToken, "hunter2-hunter2"} {
		assert.NotContains(t, out, planted)
	}
	for _, kept := range []string{"my-class", "app-0", "csi-123", "serviceAccount.tokens", "dbPassword"} {
		assert.Contains(t, out, kept, "what is not a credential stays readable")
	}
	assert.Contains(t, out, Placeholder)
	// The request itself is unchanged.
	assert.Equal(t, tokensJSON(opaqueToken), req.VolumeContext["csi.storage.k8s.io/serviceAccount.tokens"])
	assert.Equal(t, plantedSecret, req.Secrets["clientsecret"])
}

func TestRequestWithoutVolumeContext(t *testing.T) {
	out := fmt.Sprint(Request(&csipb.NodeUnpublishVolumeRequest{VolumeId: "v", TargetPath: "/t"}))
	assert.Contains(t, out, `"target_path":"/t"`)
	assert.Contains(t, fmt.Sprint(Request("not a proto")), "not a proto")
}

func TestSensitiveKey(t *testing.T) {
	for key, want := range map[string]bool{
		"csi.storage.k8s.io/serviceAccount.tokens": true,
		"clientsecret":                  true,
		"kubernetes.io/secret/clientid": true,
		"dbPassword":                    true,
		"apiKey":                        true,
		"secretProviderClass":           false,
		"keyvaultName":                  false,
		"csi.storage.k8s.io/pod.name":   false,
		"objects":                       false,
	} {
		assert.Equal(t, want, SensitiveKey(key), key)
	}
}

func TestScrubberRemovesKnownValuesAndShapes(t *testing.T) {
	var s Scrubber
	req := publishRequest()
	s.AddAll(req.Secrets)
	s.AddMap(req.VolumeContext)
	s.Add("ab") // too short to scrub

	pemKeyText := "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBg\n-----END PRIVATE KEY-----"
	msg := strings.Join([]string{
		"secret " + plantedSecret,
		"base64 " + base64.StdEncoding.EncodeToString([]byte(plantedSecret)),
		"opaque token " + opaqueToken,
		"some other jwt eyJhbGciOiJIUzI1NiJ9.eyJ4IjoxfQ.c2ln",
		"key " + pemKeyText,
		"short ab stays",
		// A key cut short takes the rest of the message with it.
		"truncated -----BEGIN RSA PRIVATE KEY-----\nMIIE",
	}, "; ")
	out := s.String(msg)
	for _, planted := range []string{plantedSecret, base64.StdEncoding.EncodeToString([]byte(plantedSecret)), opaqueToken,
		"eyJhbGciOiJIUzI1NiJ9", "MIIEvQIBADANBg", "MIIE"} {
		assert.NotContains(t, out, planted)
	}
	assert.Contains(t, out, "short ab stays")
	assert.Contains(t, out, "secret "+Placeholder)

	var zero *Scrubber
	assert.Equal(t, "x "+Placeholder, zero.String("x "+plantedToken), "a nil scrubber still removes shapes")
}

func TestLoggerScrubsMessageValuesAndErrors(t *testing.T) {
	var buf bytes.Buffer
	base := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&buf), textlogger.Verbosity(10)))
	var s Scrubber
	s.Add(plantedSecret)
	l := Logger(base, &s).WithValues("request", "carries "+plantedSecret)

	l.Info("message with "+plantedSecret, "value", plantedSecret, "bytes", []byte(plantedSecret),
		"stringer", stringer(plantedSecret), "count", 3)
	l.V(9).Info("verbose", "token", plantedToken)
	l.Error(errors.New("failed with "+plantedSecret), "call failed", "cause", fmt.Errorf("wrapped: %s", plantedToken))
	l.WithName("child").Info("named", "v", plantedSecret)

	out := buf.String()
	require.NotEmpty(t, out)
	assert.NotContains(t, out, plantedSecret)
	assert.NotContains(t, out, plantedToken)
	assert.Contains(t, out, "count=3", "values that are not text pass unchanged")
	assert.Equal(t, 4, strings.Count(out, "\n"), "every line still written:\n%s", out)
	assert.Contains(t, out, "redact_test.go", "the caller's file is reported, not the wrapper's")
}

type stringer string

func (s stringer) String() string { return string(s) }
