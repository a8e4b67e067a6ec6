package v1alpha1

import (
	"fmt"
	"os"
	"regexp"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// The wire contract every provider plugin was built against. A plugin
// decodes kvdriver's requests by these numbers and types, and gRPC routes
// by the package, service and method names; none of them may change.
var (
	wantPackage = "v1alpha1"
	wantMethods = map[string][2]string{ // method -> request, response
		"Version": {"VersionRequest", "VersionResponse"},
		"Mount":   {"MountRequest", "MountResponse"},
	}
	wantFields = map[string][]wireField{
		"VersionRequest": {{"version", 1, protoreflect.StringKind, false, ""}},
		"VersionResponse": {
			{"version", 1, protoreflect.StringKind, false, ""},
			{"runtime_name", 2, protoreflect.StringKind, false, ""},
			{"runtime_version", 3, protoreflect.StringKind, false, ""},
		},
		"MountRequest": {
			{"attributes", 1, protoreflect.StringKind, false, ""},
			{"secrets", 2, protoreflect.StringKind, false, ""},
			{"target_path", 3, protoreflect.StringKind, false, ""},
			{"permission", 4, protoreflect.StringKind, false, ""},
			{"current_object_version", 5, protoreflect.MessageKind, true, "ObjectVersion"},
		},
		"MountResponse": {
			{"object_version", 1, protoreflect.MessageKind, true, "ObjectVersion"},
			{"error", 2, protoreflect.MessageKind, false, "Error"},
			{"files", 3, protoreflect.MessageKind, true, "File"},
		},
		"File": {
			{"path", 1, protoreflect.StringKind, false, ""},
			{"mode", 2, protoreflect.Int32Kind, false, ""},
			{"contents", 3, protoreflect.BytesKind, false, ""},
		},
		"ObjectVersion": {
			{"id", 1, protoreflect.StringKind, false, ""},
			{"version", 2, protoreflect.StringKind, false, ""},
		},
		"Error": {{"code", 1, protoreflect.StringKind, false, ""}},
	}
)

type wireField struct {
	name     string
	number   protoreflect.FieldNumber
	kind     protoreflect.Kind
	repeated bool
	message  string // the message type of a message field
}

// TestWireContract checks the generated descriptor, which is what the
// compiled code encodes with, against the contract.
func TestWireContract(t *testing.T) {
	fd := File_providerapi_v1alpha1_service_proto
	assert.Equal(t, protoreflect.FullName(wantPackage), fd.Package())

	require.Equal(t, 1, fd.Services().Len())
	svc := fd.Services().Get(0)
	assert.Equal(t, protoreflect.FullName("v1alpha1.CSIDriverProvider"), svc.FullName())
	require.Equal(t, len(wantMethods), svc.Methods().Len())
	for name, io := range wantMethods {
		m := svc.Methods().ByName(protoreflect.Name(name))
		require.NotNil(t, m, "method %s", name)
		assert.Equal(t, protoreflect.FullName(wantPackage+"."+io[0]), m.Input().FullName(), name)
		assert.Equal(t, protoreflect.FullName(wantPackage+"."+io[1]), m.Output().FullName(), name)
		assert.False(t, m.IsStreamingClient() || m.IsStreamingServer(), "%s is unary", name)
	}
	assert.Equal(t, "/v1alpha1.CSIDriverProvider/Mount", CSIDriverProvider_Mount_FullMethodName)
	assert.Equal(t, "/v1alpha1.CSIDriverProvider/Version", CSIDriverProvider_Version_FullMethodName)

	require.Equal(t, len(wantFields), fd.Messages().Len())
	for msgName, fields := range wantFields {
		md := fd.Messages().ByName(protoreflect.Name(msgName))
		require.NotNil(t, md, "message %s", msgName)
		assert.Equal(t, len(fields), md.Fields().Len(), "fields of %s", msgName)
		for _, want := range fields {
			f := md.Fields().ByNumber(want.number)
			require.NotNil(t, f, "%s field %d", msgName, want.number)
			assert.Equal(t, protoreflect.Name(want.name), f.Name(), "%s field %d", msgName, want.number)
			assert.Equal(t, want.kind, f.Kind(), "%s.%s", msgName, want.name)
			assert.Equal(t, want.repeated, f.IsList(), "%s.%s repeated", msgName, want.name)
			if want.message != "" {
				assert.Equal(t, protoreflect.FullName(wantPackage+"."+want.message), f.Message().FullName(), "%s.%s", msgName, want.name)
			}
		}
	}
}

// TestProtoMatchesGenerated reads service.proto itself, so that an edit
// to the .proto that was not regenerated (hack/generate.sh) fails here
// too, without protoc on the machine: every field line of the source must
// be one of the contract's, and every contract field must be in the source.
func TestProtoMatchesGenerated(t *testing.T) {
	src, err := os.ReadFile("service.proto")
	require.NoError(t, err)
	fieldLine := regexp.MustCompile(`(?m)^\s*(?:repeated\s+)?[A-Za-z0-9_.]+\s+([a-z_]+)\s*=\s*([0-9]+)\s*;`)
	inSource := map[string]bool{}
	for _, m := range fieldLine.FindAllStringSubmatch(string(src), -1) {
		inSource[m[1]+"="+m[2]] = true
	}
	inContract := map[string]bool{}
	for _, fields := range wantFields {
		for _, f := range fields {
			inContract[fmt.Sprintf("%s=%d", f.name, f.number)] = true
		}
	}
	assert.Equal(t, inContract, inSource, "service.proto's fields (name=number) differ from the contract")
	assert.Regexp(t, `(?m)^package v1alpha1;`, string(src))
	assert.Regexp(t, `rpc Version\(VersionRequest\) returns \(VersionResponse\)`, string(src))
	assert.Regexp(t, `rpc Mount\(MountRequest\) returns \(MountResponse\)`, string(src))
}
