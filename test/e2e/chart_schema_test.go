package e2e

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestChartValuesSchema: values.schema.json refuses a mistyped key and a
// value of the wrong type or shape, naming it, and accepts the defaults
// and every example the README and values.yaml give.
func TestChartValuesSchema(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		// want are the parts of helm's error, each naming the value;
		// none: the values are accepted.
		want []string
	}{
		{name: "defaults"},
		{name: "README: image", args: []string{"--set", "image.repository=registry.example/kvnode", "--set", "image.tag=v1.2.3"}},
		{name: "values.yaml: Azure Stack environment file", args: []string{
			"--set", "kvdriver.extraVolumes[0].name=azurestack",
			"--set", "kvdriver.extraVolumes[0].hostPath.path=/etc/kubernetes/azurestackcloud.json",
			"--set", "kvdriver.extraVolumes[0].hostPath.type=File",
			"--set", "kvdriver.extraVolumeMounts[0].name=azurestack",
			"--set", "kvdriver.extraVolumeMounts[0].mountPath=/etc/kubernetes/azurestackcloud.json",
			"--set", "kvdriver.extraVolumeMounts[0].readOnly=true"}},
		{name: "values.yaml: proxy environment", args: []string{"--set", "nmi.env[0].name=HTTPS_PROXY", "--set", "nmi.env[0].value=http://proxy.example:3128",
			"--set", "nmi.env[1].name=NO_PROXY", "--set", "nmi.env[1].value=169.254.169.254"}},
		{name: "README: uninstall", args: []string{"--set", "nmi.removeRulesOnExit=true"}},
		{name: "object cache off", args: []string{"--set", "kvdriver.objectCacheTTL=0"}},
		{name: "no other providers", args: []string{"--set", "kvdriver.providersDirs=null"}},
		{name: "nmi on a link-local address", args: []string{"--set", "nmi.listenAddress=169.254.20.11", "--set", "nmi.podCIDR=10.244.0.0/16",
			"--set", "nmi.podInterfacePrefix=cali", "--set", "nmi.defaultTenantID=5b1f0c8e-7a2d-4c3b-9e1f-2a3b4c5d6e7f"}},
		{name: "a CPU limit", args: []string{"--set", "kvdriver.resources.limits.cpu=500m", "--set", "nmi.resources.limits.cpu=1"}},

		{name: "mistyped key", args: []string{"--set", "kvdriver.objectCacheTtl=30s"},
			want: []string{"at '/kvdriver': additional properties 'objectCacheTtl' not allowed"}},
		{name: "mistyped top-level key", args: []string{"--set", "syncSecrets.enabled=false"},
			want: []string{"additional properties 'syncSecrets' not allowed"}},
		{name: "mistyped nmi key", args: []string{"--set", "nmi.removeRulesOnExits=true"},
			want: []string{"at '/nmi': additional properties 'removeRulesOnExits' not allowed"}},
		{name: "port as text", args: []string{"--set", "nmi.listenPort=http"},
			want: []string{"at '/nmi/listenPort': got string, want integer"}},
		{name: "port out of range", args: []string{"--set", "livenessProbe.port=70000"},
			want: []string{"at '/livenessProbe/port': maximum"}},
		{name: "duration without a unit", args: []string{"--set", "kvdriver.rotationPollInterval=120"},
			want: []string{"at '/kvdriver/rotationPollInterval'"}},
		{name: "duration misspelt", args: []string{"--set", "kvdriver.objectCacheTTL=1min"},
			want: []string{"at '/kvdriver/objectCacheTTL'", "does not match pattern"}},
		{name: "zero reconcile interval", args: []string{"--set", "nmi.reconcileInterval=0s"},
			want: []string{"at '/nmi/reconcileInterval'"}},
		{name: "boolean as text", args: []string{"--set-string", "nmi.enabled=yes"},
			want: []string{"at '/nmi/enabled': got string, want boolean"}},
		{name: "driver name", args: []string{"--set", "kvdriver.driverName=Secrets_Store"},
			want: []string{"at '/kvdriver/driverName'", "does not match pattern"}},
		{name: "pull policy", args: []string{"--set", "nmi.image.pullPolicy=IfMissing"},
			want: []string{"at '/nmi/image/pullPolicy'"}},
		{name: "loopback listener", args: []string{"--set", "nmi.listenAddress=127.0.0.1"},
			want: []string{"at '/nmi/listenAddress'", "does not match pattern"}},
		{name: "resources shape", args: []string{"--set", "kvdriver.resources.limit.memory=1Gi"},
			want: []string{"at '/kvdriver/resources': additional properties 'limit' not allowed"}},
		{name: "resources quantity", args: []string{"--set", "registrar.resources.limits.memory=lots"},
			want: []string{"at '/registrar/resources/limits/memory'"}},
		{name: "a token-minting Secret type", args: []string{"--set", "syncSecret.types={Opaque,kubernetes.io/service-account-token}"},
			want: []string{"at '/syncSecret/types/1'"}},
		{name: "unlimited tmpfs", args: []string{"--set", "kvdriver.tmpfsSize=0"},
			want: []string{"at '/kvdriver/tmpfsSize'"}},
		{name: "relative kubelet directory", args: []string{"--set", "kubeletDir=var/lib/kubelet"},
			want: []string{"at '/kubeletDir'"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, stderr, err := helmTemplate(t, chartNamespace, tc.args...)
			if len(tc.want) == 0 {
				require.NoError(t, err, "helm template: %s", stderr)
				return
			}
			require.Error(t, err)
			assert.Contains(t, stderr, "values don't meet the specifications of the schema")
			for _, w := range tc.want {
				assert.Contains(t, stderr, w)
			}
		})
	}
}
