# Multi-stage build of kvnode's binaries. Each image is its own final stage,
# selected with --target; all binaries are static (CGO_ENABLED=0).
#
#   docker build --target kvnode -t kvnode/kvnode .                  # kvdriver
#   docker build --target nmi -t kvnode/nmi .                        # nmi
#   docker build --target azure-emulator -t kvnode/azure-emulator .

ARG GO_VERSION=1.26

FROM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath \
      -ldflags "-s -w -X github.com/kvnode/kvnode/pkg/version.Version=${VERSION}" \
      -o /out/ ./cmd/kvdriver ./cmd/nmi ./test/emulator/cmd/azure-emulator

# kvdriver, the CSI node plugin (and the azure/kv FlexVolume driver). It
# mounts tmpfs volumes with system calls, so the image needs no mount(8);
# it runs privileged as root in the DaemonSet because mounting needs it.
FROM gcr.io/distroless/static-debian12 AS kvnode
COPY --from=build /out/kvdriver /kvdriver
ENTRYPOINT ["/kvdriver"]

# nmi, the node managed-identity daemon. It runs iptables, so its image has
# Debian's iptables (nf_tables backend, as current nodes use; set the
# alternative to iptables-legacy on nodes that still use it) and nothing else.
FROM debian:bookworm-slim AS nmi
RUN apt-get update \
 && apt-get install -y --no-install-recommends iptables \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/nmi /nmi
ENTRYPOINT ["/nmi"]

# The Azure emulator, for users' own integration tests and the demo. It
# listens on 8443 and writes its CA to /tmp/ca.crt.
FROM gcr.io/distroless/static-debian12:nonroot AS azure-emulator
COPY --from=build /out/azure-emulator /azure-emulator
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["/azure-emulator", "--listen", "0.0.0.0:8443", "--dir", "/tmp"]
