package tokensource

import (
	"context"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/tokencache"
	"github.com/kvnode/kvnode/test/emulator"
	"github.com/kvnode/kvnode/test/testenv"
)

const vault = "https://vault.azure.net"

// startEmulator starts the Azure emulator with one managed identity assigned
// to the node and returns it with an Upstream that reaches its IMDS through
// the emulator's forward proxy (the way nmi reaches the real one, at
// http://169.254.169.254, minus the proxy).
func startEmulator(t *testing.T) (*emulator.Emulator, emulator.Principal, *NodeIMDS) {
	t.Helper()
	testenv.RequireNetns(t)
	e := emulator.StartT(t)
	p, err := e.AddManagedIdentity(emulator.Principal{TenantID: "72f988bf-86f1-41af-91ab-2d7cd011db47"})
	require.NoError(t, err)
	return e, p, NewNodeIMDS("http://"+emulator.IMDSHost, e.HTTPClient())
}

func TestUpstreamAgainstEmulator(t *testing.T) {
	e, p, up := startEmulator(t)
	ctx := context.Background()

	before := time.Now()
	tok, err := up.Token(ctx, tokencache.Key{Identity: p.ClientID, Resource: vault})
	require.NoError(t, err)
	assert.NotEmpty(t, tok.AccessToken)
	assert.WithinDuration(t, before.Add(time.Hour), tok.ExpiresOn, 5*time.Second)
	assert.False(t, tok.NotBefore.After(time.Now()))
	reqs := e.Requests(emulator.RequestFilter{Service: emulator.ServiceIMDS})
	require.Len(t, reqs, 1)
	assert.Equal(t, p.ClientID, reqs[0].Identity)
	assert.Equal(t, http.StatusOK, reqs[0].Status)

	// An identity the node does not have: IMDS's 400 comes back as an
	// UpstreamError with its code and description.
	_, err = up.Token(ctx, tokencache.Key{Identity: "00000000-0000-0000-0000-00000000dead", Resource: vault})
	var ue *UpstreamError
	require.ErrorAs(t, err, &ue)
	assert.Equal(t, UpstreamError{Status: 400, Code: "invalid_request", Description: "Identity not found"}, *ue)

	// A fault: IMDS's 500 is an UpstreamError too.
	require.NoError(t, e.InjectIMDSFault(emulator.Fault{Status: http.StatusInternalServerError, Count: 1}))
	_, err = up.Token(ctx, tokencache.Key{Identity: p.ClientID, Resource: vault})
	require.ErrorAs(t, err, &ue)
	assert.Equal(t, http.StatusInternalServerError, ue.Status)
	assert.NotContains(t, err.Error(), tok.AccessToken)
}

func TestParseTokenAnswer(t *testing.T) {
	now := time.Unix(1700000000, 0)
	tok, err := parseTokenAnswer([]byte(`{"access_token":"a","expires_in":"3599","expires_on":"1700003599","not_before":"1699999700","token_type":"Bearer"}`), now)
	require.NoError(t, err)
	assert.Equal(t, tokencache.Token{AccessToken: "a", ExpiresOn: time.Unix(1700003599, 0), NotBefore: time.Unix(1699999700, 0)}, tok)

	tok, err = parseTokenAnswer([]byte(`{"access_token":"a","expires_in":600}`), now)
	require.NoError(t, err)
	assert.Equal(t, now.Add(10*time.Minute), tok.ExpiresOn)

	for _, body := range []string{`not json eyJsecret`, `{"access_token":""}`, `{"access_token":"eyJsecret"}`, `{"access_token":"eyJsecret","expires_on":"1700003599","token_type":"pop"}`} {
		_, err := parseTokenAnswer([]byte(body), now)
		require.Error(t, err, body)
		assert.NotContains(t, err.Error(), "eyJsecret")
	}
}

// TestConcurrentColdRequestsOneUpstreamCall: 1,000 pods' requests at once
// for one identity and resource that nothing has asked for yet make exactly
// one call to IMDS, through the real cache and the real (emulated) IMDS.
