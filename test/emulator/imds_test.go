package emulator

import (
	"context"
	"errors"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const imdsTokenURL = "http://169.254.169.254/metadata/identity/oauth2/token"

// imdsGet sends an IMDS request through the emulator's proxy. rawQuery is
// sent as is; headers are added to the request.
func imdsGet(t *testing.T, c *http.Client, path, rawQuery string, headers map[string][]string) (int, map[string]any, http.Header) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, "http://"+IMDSHost+path, nil)
	require.NoError(t, err)
	req.URL.RawQuery = rawQuery
	for k, vs := range headers {
		for _, v := range vs {
			req.Header.Add(k, v)
		}
	}
	return idDo(t, c, req)
}

var metadataTrue = map[string][]string{"Metadata": {"true"}}

// unlimitedIMDS lifts the IMDS rate limits for tests that send many requests.
func unlimitedIMDS(e *Emulator) {
	e.imds.mu.Lock()
	e.imds.rate, e.imds.conc = 1<<20, 1<<20
	e.imds.mu.Unlock()
}

func TestIMDSWireFormat(t *testing.T) {
	e := idEmulator(t)
	unlimitedIMDS(e)
	c := idClient(t, e)
	mi, err := e.AddManagedIdentity(Principal{TenantID: idTenant, ClientID: "33333333-3333-4333-8333-333333333333"})
	require.NoError(t, err)
	require.NotEmpty(t, mi.ObjectID)
	require.True(t, strings.HasPrefix(mi.ResourceID, "/subscriptions/"), mi.ResourceID)
	require.Contains(t, mi.ResourceID, "/providers/Microsoft.ManagedIdentity/userAssignedIdentities/")

	resource := "https://vault.azure.net"
	base := "api-version=2018-02-01&resource=" + url.QueryEscape(resource)
	tests := []struct {
		name    string
		path    string
		query   string
		headers map[string][]string
		status  int
		code    string
		desc    string
	}{
		{name: "good", query: base, headers: metadataTrue, status: 200},
		{name: "good, newer api-version", query: "api-version=2019-08-01&resource=" + url.QueryEscape(resource), headers: metadataTrue, status: 200},
		{name: "no Metadata header (the DefaultAzureCredential probe)", query: "", status: 400, code: "invalid_request", desc: "Required metadata header not specified"},
		{name: "Metadata header not lower-case true", query: base, headers: map[string][]string{"Metadata": {"True"}}, status: 400, code: "invalid_request", desc: "Required metadata header not specified"},
		{name: "Metadata header twice", query: base, headers: map[string][]string{"Metadata": {"true", "true"}}, status: 400, code: "invalid_request", desc: "Required metadata header not specified"},
		{name: "X-Forwarded-For", query: base, headers: map[string][]string{"Metadata": {"true"}, "X-Forwarded-For": {"10.0.0.7"}}, status: 400, code: "invalid_request"},
		{name: "duplicate resource", query: base + "&resource=https%3A%2F%2Fmanagement.azure.com", headers: metadataTrue, status: 400, code: "invalid_request", desc: "Duplicate query parameter 'resource'"},
		{name: "duplicate client_id", query: base + "&client_id=" + mi.ClientID + "&client_id=" + mi.ClientID, headers: metadataTrue, status: 400, code: "invalid_request"},
		{name: "no api-version", query: "resource=" + url.QueryEscape(resource), headers: metadataTrue, status: 400, code: "invalid_request", desc: "Required query variable 'api-version' is missing"},
		{name: "too old api-version", query: "api-version=2017-09-01&resource=" + url.QueryEscape(resource), headers: metadataTrue, status: 400, code: "invalid_request"},
		{name: "no resource", query: "api-version=2018-02-01", headers: metadataTrue, status: 400, code: "invalid_request", desc: "Required audience parameter not specified"},
		{name: "resource not a URI", query: "api-version=2018-02-01&resource=vault", headers: metadataTrue, status: 400, code: "invalid_resource"},
		{name: "two selectors", query: base + "&client_id=" + mi.ClientID + "&object_id=" + mi.ObjectID, headers: metadataTrue, status: 400, code: "invalid_request"},
		{name: "unknown path", path: "/metadata/identity/oauth2/tokens", query: base, headers: metadataTrue, status: 404},
		{name: "backslash path (CVE-2022-23551)", path: `/metadata/identity\oauth2\token/`, query: base, headers: metadataTrue, status: 404},
		{name: "instance metadata is not emulated", path: "/metadata/instance", query: "api-version=2021-02-01", headers: metadataTrue, status: 404},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			e.ResetRequests()
			path := tc.path
			if path == "" {
				path = imdsTokenPath
			}
			st, body, hdr := imdsGet(t, c, path, tc.query, tc.headers)
			require.Equal(t, tc.status, st, "%v", body)
			assert.True(t, strings.HasPrefix(hdr.Get("Content-Type"), "application/json"))
			reqs := e.Requests(RequestFilter{Service: ServiceIMDS})
			require.Len(t, reqs, 1)
			assert.Equal(t, tc.status, reqs[0].Status)
			if st != http.StatusOK {
				if tc.code != "" {
					assert.Equal(t, tc.code, body["error"])
				}
				if tc.desc != "" {
					assert.Equal(t, tc.desc, body["error_description"])
				}
				assert.NotContains(t, body, "access_token")
				return
			}
			for k, v := range body {
				assert.IsType(t, "", v, "every value of IMDS's answer is a JSON string; %s is not", k)
			}
			for _, k := range []string{"access_token", "refresh_token", "expires_in", "expires_on", "not_before", "resource", "token_type", "client_id"} {
				assert.Contains(t, body, k)
			}
			assert.Equal(t, "", body["refresh_token"])
			assert.Equal(t, "Bearer", body["token_type"])
			assert.Equal(t, resource, body["resource"])
			assert.Equal(t, mi.ClientID, body["client_id"])
			expIn, err := strconv.Atoi(body["expires_in"].(string))
			require.NoError(t, err)
			assert.InDelta(t, 3600, expIn, 5)
			expOn, err := strconv.ParseInt(body["expires_on"].(string), 10, 64)
			require.NoError(t, err)
			assert.InDelta(t, time.Now().Add(time.Hour).Unix(), expOn, 5)
			nbf, err := strconv.ParseInt(body["not_before"].(string), 10, 64)
			require.NoError(t, err)
			assert.LessOrEqual(t, nbf, time.Now().Unix())
			claims, err := e.signer.verify(body["access_token"].(string), resource)
			require.NoError(t, err)
			assert.Equal(t, mi.ObjectID, claims.ObjectID)
			assert.Equal(t, mi.ResourceID, claims.ResourceID)
			assert.Equal(t, mi.ClientID, reqs[0].Identity)
		})
	}
}

func TestIMDSIdentitySelection(t *testing.T) {
	e := idEmulator(t)
	unlimitedIMDS(e)
	c := idClient(t, e)
	q := "api-version=2018-02-01&resource=" + url.QueryEscape("https://vault.azure.net")
	token := func(t *testing.T, extra string) (int, map[string]any) {
		t.Helper()
		st, body, _ := imdsGet(t, c, imdsTokenPath, q+extra, metadataTrue)
		return st, body
	}

	st, body := token(t, "")
	assert.Equal(t, http.StatusBadRequest, st)
	assert.Equal(t, map[string]any{"error": "invalid_request", "error_description": "Identity not found"}, body, "no identity assigned")

	a, err := e.AddManagedIdentity(Principal{TenantID: idTenant, ClientID: "aaaaaaaa-0000-4000-8000-00000000000a"})
	require.NoError(t, err)
	st, body = token(t, "")
	require.Equal(t, http.StatusOK, st, "the single assigned identity is served without a selector: %v", body)
	assert.Equal(t, a.ClientID, body["client_id"])

	b, err := e.AddManagedIdentity(Principal{TenantID: idTenant, ClientID: "bbbbbbbb-0000-4000-8000-00000000000b",
		ResourceID: "/subscriptions/0000/resourceGroups/RG-One/providers/Microsoft.ManagedIdentity/userAssignedIdentities/Id-B"})
	require.NoError(t, err)
	st, body = token(t, "")
	assert.Equal(t, http.StatusBadRequest, st)
	assert.Equal(t, "invalid_request", body["error"])
	assert.Equal(t, "Multiple user assigned identities exist, please specify the clientId / resourceId of the identity in the token request", body["error_description"])

	tests := []struct {
		name  string
		extra string
		want  string
	}{
		{"client_id", "&client_id=" + b.ClientID, b.ClientID},
		{"client_id upper case", "&client_id=" + strings.ToUpper(b.ClientID), b.ClientID},
		{"object_id", "&object_id=" + a.ObjectID, a.ClientID},
		{"msi_res_id", "&msi_res_id=" + url.QueryEscape(b.ResourceID), b.ClientID},
		{"msi_res_id in other case", "&msi_res_id=" + url.QueryEscape(strings.ToLower(b.ResourceID)), b.ClientID},
		{"mi_res_id", "&mi_res_id=" + url.QueryEscape(a.ResourceID), a.ClientID},
		{"unknown client_id", "&client_id=cccccccc-0000-4000-8000-00000000000c", ""},
		{"an application is not a managed identity on the node", "&client_id=" + idAppClient, ""},
	}
	_, err = e.AddApplication(Principal{TenantID: idTenant, ClientID: idAppClient, Secret: idAppSecret})
	require.NoError(t, err)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, body := token(t, tc.extra)
			if tc.want == "" {
				assert.Equal(t, http.StatusBadRequest, st)
				assert.Equal(t, "Identity not found", body["error_description"])
				return
			}
			require.Equal(t, http.StatusOK, st, "%v", body)
			assert.Equal(t, tc.want, body["client_id"])
		})
	}

	t.Run("unassign and assign", func(t *testing.T) {
		e.UnassignIdentity(b.ClientID)
		st, body := token(t, "&client_id="+b.ClientID)
		assert.Equal(t, http.StatusBadRequest, st)
		assert.Equal(t, "Identity not found", body["error_description"])
		st, body = token(t, "")
		require.Equal(t, http.StatusOK, st, "one identity is left: %v", body)
		assert.Equal(t, a.ClientID, body["client_id"])
		require.NoError(t, e.AssignIdentity(b.ClientID))
		st, _ = token(t, "&client_id="+b.ClientID)
		assert.Equal(t, http.StatusOK, st)
		assert.Error(t, e.AssignIdentity(idAppClient), "an application cannot be assigned as a managed identity")
	})

	t.Run("system-assigned is the default", func(t *testing.T) {
		sys, err := e.SetSystemAssignedIdentity(Principal{TenantID: idTenant})
		require.NoError(t, err)
		st, body := token(t, "")
		require.Equal(t, http.StatusOK, st, "%v", body)
		assert.Equal(t, sys.ClientID, body["client_id"])
		assert.Equal(t, []string{sys.ClientID, a.ClientID, b.ClientID}, e.AssignedIdentities())
	})
}

func TestIMDSRateLimit(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	_, err := e.AddManagedIdentity(Principal{TenantID: idTenant})
	require.NoError(t, err)
	q := "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"

	start := time.Now()
	statuses := map[int]int{}
	var retryAfter string
	for range imdsRatePerSecond + 5 {
		st, body, hdr := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
		statuses[st]++
		if st == http.StatusTooManyRequests {
			retryAfter = hdr.Get("Retry-After")
			assert.Equal(t, "too_many_requests", body["error"])
		}
	}
	if time.Since(start) >= time.Second {
		t.Skip("skipped: the requests took over a second, so the per-second limit cannot be observed on this machine")
	}
	assert.Equal(t, imdsRatePerSecond, statuses[http.StatusOK])
	assert.Equal(t, 5, statuses[http.StatusTooManyRequests])
	assert.Equal(t, "1", retryAfter)
	assert.Equal(t, 5, e.CountRequests(RequestFilter{Service: ServiceIMDS, Status: http.StatusTooManyRequests}))

	time.Sleep(time.Second)
	st, _, _ := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
	assert.Equal(t, http.StatusOK, st, "the window slides")
}

func TestIMDSConcurrencyLimit(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	_, err := e.AddManagedIdentity(Principal{TenantID: idTenant})
	require.NoError(t, err)
	q := "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"
	require.NoError(t, e.InjectIMDSFault(Fault{Latency: 2 * time.Second, Count: imdsConcurrency}))

	var wg sync.WaitGroup
	slow := make([]int, imdsConcurrency)
	for i := range imdsConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			req, _ := http.NewRequest(http.MethodGet, imdsTokenURL+"?"+q, nil)
			req.Header.Set("Metadata", "true")
			resp, err := c.Do(req)
			if err == nil {
				slow[i] = resp.StatusCode
				resp.Body.Close()
			}
		}()
	}
	require.Eventually(t, func() bool {
		e.imds.mu.Lock()
		defer e.imds.mu.Unlock()
		return e.imds.inflight == imdsConcurrency
	}, 2*time.Second, 5*time.Millisecond)
	st, body, hdr := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
	assert.Equal(t, http.StatusTooManyRequests, st, "a sixth concurrent request is refused")
	assert.Equal(t, "too_many_requests", body["error"])
	assert.NotEmpty(t, hdr.Get("Retry-After"))
	wg.Wait()
	assert.Equal(t, []int{200, 200, 200, 200, 200}, slow)
}

func TestIMDSFaults(t *testing.T) {
	e := idEmulator(t)
	unlimitedIMDS(e)
	c := idClient(t, e)
	_, err := e.AddManagedIdentity(Principal{TenantID: idTenant})
	require.NoError(t, err)
	q := "api-version=2018-02-01&resource=https%3A%2F%2Fvault.azure.net"

	for _, status := range []int{http.StatusGone, http.StatusInternalServerError, http.StatusNotFound, http.StatusTooManyRequests} {
		t.Run(strconv.Itoa(status), func(t *testing.T) {
			require.NoError(t, e.InjectIMDSFault(Fault{Status: status, Count: 2}))
			for range 2 {
				st, body, _ := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
				assert.Equal(t, status, st)
				assert.NotEmpty(t, body["error"])
				assert.NotEmpty(t, body["error_description"])
			}
			st, _, _ := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
			assert.Equal(t, http.StatusOK, st)
		})
	}

	t.Run("until cleared", func(t *testing.T) {
		require.NoError(t, e.InjectIMDSFault(Fault{Status: http.StatusGone}))
		for range 3 {
			st, _, _ := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
			assert.Equal(t, http.StatusGone, st)
		}
		e.ClearIMDSFaults()
		st, _, _ := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
		assert.Equal(t, http.StatusOK, st)
	})

	t.Run("faults queue", func(t *testing.T) {
		require.NoError(t, e.InjectIMDSFault(Fault{Status: http.StatusGone, Count: 1}))
		require.NoError(t, e.InjectIMDSFault(Fault{Status: http.StatusInternalServerError, Count: 1}))
		var got []int
		for range 3 {
			st, _, _ := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
			got = append(got, st)
		}
		assert.Equal(t, []int{410, 500, 200}, got)
	})

	t.Run("latency", func(t *testing.T) {
		require.NoError(t, e.InjectIMDSFault(Fault{Latency: 250 * time.Millisecond, Count: 1}))
		start := time.Now()
		st, _, _ := imdsGet(t, c, imdsTokenPath, q, metadataTrue)
		assert.Equal(t, http.StatusOK, st)
		assert.GreaterOrEqual(t, time.Since(start), 250*time.Millisecond)
	})

	t.Run("latency respects the client's deadline", func(t *testing.T) {
		e.ResetRequests()
		require.NoError(t, e.InjectIMDSFault(Fault{Latency: time.Minute, Count: 1}))
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, imdsTokenURL+"?"+q, nil)
		require.NoError(t, err)
		req.Header.Set("Metadata", "true")
		start := time.Now()
		_, err = c.Do(req)
		require.Error(t, err)
		assert.True(t, errors.Is(err, context.DeadlineExceeded), "%v", err)
		require.Eventually(t, func() bool {
			return e.CountRequests(RequestFilter{Service: ServiceIMDS, Status: statusClientClosed}) == 1
		}, 5*time.Second, 10*time.Millisecond, "the emulator stops waiting when the client leaves")
		assert.Less(t, time.Since(start), 10*time.Second)
	})

	t.Run("invalid faults", func(t *testing.T) {
		assert.Error(t, e.InjectIMDSFault(Fault{}))
		assert.Error(t, e.InjectIMDSFault(Fault{Status: 302}))
		assert.Error(t, e.InjectIMDSFault(Fault{Status: 500, Count: -1}))
		assert.Error(t, e.InjectIMDSFault(Fault{Latency: -time.Second}))
	})
}

// The proxy answers hosts it does not emulate with 421, which the Azure SDK
// does not retry.
func TestUnknownHostMisdirected(t *testing.T) {
	e := idEmulator(t)
	c := idClient(t, e)
	for _, u := range []string{"http://10.0.0.1/metadata/identity/oauth2/token", "https://management.azure.com/subscriptions", "https://login.example.com/x"} {
		t.Run(u, func(t *testing.T) {
			req, err := http.NewRequest(http.MethodGet, u, nil)
			require.NoError(t, err)
			resp, err := c.Do(req)
			require.NoError(t, err)
			resp.Body.Close()
			assert.Equal(t, http.StatusMisdirectedRequest, resp.StatusCode)
		})
	}
	assert.Equal(t, 3, e.CountRequests(RequestFilter{Service: ServiceUnknown, Status: http.StatusMisdirectedRequest}))
}
