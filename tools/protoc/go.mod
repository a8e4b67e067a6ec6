// Module protoc pins the protoc plugins that `make generate` runs to turn
// pkg/providerapi's .proto into Go.
module github.com/kvnode/kvnode/tools/protoc

go 1.26.0

require (
	google.golang.org/grpc/cmd/protoc-gen-go-grpc v1.6.2
	google.golang.org/protobuf v1.36.12
)
