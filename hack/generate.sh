#!/usr/bin/env bash
# Regenerates the Go code of pkg/providerapi from its .proto with protoc
# (Debian's protobuf-compiler) and the protoc plugins pinned in tools/protoc.
# The generated files are committed; run this after editing the .proto.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v protoc >/dev/null 2>&1; then
	echo "generate: protoc is missing; install it with: apt-get install -y protobuf-compiler" >&2
	exit 1
fi

bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
(cd tools/protoc && go build -o "$bin/" google.golang.org/protobuf/cmd/protoc-gen-go google.golang.org/grpc/cmd/protoc-gen-go-grpc)

# The import root is pkg/, so the file registers as
# providerapi/v1alpha1/service.proto, a name no other module's file takes.
PATH="$bin:$PATH" protoc -I pkg \
	--go_out=pkg --go_opt=paths=source_relative \
	--go-grpc_out=pkg --go-grpc_opt=paths=source_relative \
	pkg/providerapi/v1alpha1/service.proto
