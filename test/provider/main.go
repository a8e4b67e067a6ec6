// Command provider is a secrets-store provider plugin for kvnode's tests:
// a real v1alpha1.CSIDriverProvider server on a unix socket, as the Vault,
// GCP and AWS plugins are, that kvdriver forwards the mounts of non-azure
// classes to. It fetches from no store: a class's parameters say what it
// answers.
//
//	path: DIR        every regular file under --root/DIR, with its mode;
//	                 object versions are content digests
//	files: JSON      [{"path","mode","contents"}] returned as given (hostile
//	                 answers)
//	fileCount: N     N small files
//	errorCode: CODE  a response carrying that error code
//	grpcCode: NAME   a gRPC status (grpcMessage its message)
//	echo: "true"     also a file request.json holding the request as
//	                 received and a serial number of the call
//
// Usage: provider --socket /etc/kubernetes/secrets-store-csi-providers/vault.sock --root DIR
package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kvnode/kvnode/pkg/providerapi/v1alpha1"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "provider:", err)
		os.Exit(1)
	}
}

func run() error {
	socket := flag.String("socket", "", "unix socket to serve on")
	root := flag.String("root", "", "directory whose subdirectories classes name in their path parameter")
	flag.Parse()
	if *socket == "" {
		return errors.New("--socket is required")
	}
	if err := os.Remove(*socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	ln, err := net.Listen("unix", *socket)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	v1alpha1.RegisterCSIDriverProviderServer(srv, &server{root: *root})
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	fmt.Fprintln(os.Stderr, "provider: serving on", *socket)
	return srv.Serve(ln)
}

type server struct {
	v1alpha1.UnimplementedCSIDriverProviderServer
	root   string
	serial atomic.Int64
}

func (s *server) Version(context.Context, *v1alpha1.VersionRequest) (*v1alpha1.VersionResponse, error) {
	return &v1alpha1.VersionResponse{Version: "v1alpha1", RuntimeName: "kvnode-test-provider", RuntimeVersion: "0.1.0"}, nil
}

func (s *server) Mount(_ context.Context, req *v1alpha1.MountRequest) (*v1alpha1.MountResponse, error) {
	serial := s.serial.Add(1)
	var attrs map[string]string
	if err := json.Unmarshal([]byte(req.GetAttributes()), &attrs); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "attributes are not a JSON object of strings: %v", err)
	}
	if name := attrs["grpcCode"]; name != "" {
		return nil, status.Error(codeNamed(name), attrs["grpcMessage"])
	}
	if code := attrs["errorCode"]; code != "" {
		return &v1alpha1.MountResponse{Error: &v1alpha1.Error{Code: code}}, nil
	}
	resp := &v1alpha1.MountResponse{}
	switch {
	case attrs["files"] != "":
		var files []struct {
			Path     string `json:"path"`
			Mode     int32  `json:"mode"`
			Contents string `json:"contents"`
		}
		if err := json.Unmarshal([]byte(attrs["files"]), &files); err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "files: %v", err)
		}
		for _, f := range files {
			resp.Files = append(resp.Files, &v1alpha1.File{Path: f.Path, Mode: f.Mode, Contents: []byte(f.Contents)})
		}
		resp.ObjectVersion = []*v1alpha1.ObjectVersion{{Id: "files", Version: "1"}}
	case attrs["fileCount"] != "":
		n, err := strconv.Atoi(attrs["fileCount"])
		if err != nil {
			return nil, status.Errorf(codes.InvalidArgument, "fileCount: %v", err)
		}
		for i := range n {
			resp.Files = append(resp.Files, &v1alpha1.File{Path: "f" + strconv.Itoa(i), Mode: 0o644, Contents: []byte("x")})
		}
		resp.ObjectVersion = []*v1alpha1.ObjectVersion{{Id: "generated", Version: "1"}}
	default:
		if err := s.fromDir(attrs["path"], resp); err != nil {
			return nil, err
		}
	}
	if attrs["echo"] == "true" {
		echo, err := json.Marshal(map[string]any{
			"attributes": req.GetAttributes(), "secrets": req.GetSecrets(), "targetPath": req.GetTargetPath(),
			"permission": req.GetPermission(), "currentObjectVersions": len(req.GetCurrentObjectVersion()), "serial": serial,
		})
		if err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
		resp.Files = append(resp.Files, &v1alpha1.File{Path: "request.json", Mode: 0o600, Contents: echo})
	}
	return resp, nil
}

// fromDir answers with every regular file under root/dir.
func (s *server) fromDir(dir string, resp *v1alpha1.MountResponse) error {
	if dir == "" || s.root == "" {
		return status.Error(codes.InvalidArgument, "parameter path (and --root) is required")
	}
	base := filepath.Join(s.root, dir)
	if rel, err := filepath.Rel(s.root, base); err != nil || strings.HasPrefix(rel, "..") {
		return status.Errorf(codes.InvalidArgument, "path %q leaves the root", dir)
	}
	err := filepath.WalkDir(base, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(base, p)
		sum := sha256.Sum256(data)
		resp.Files = append(resp.Files, &v1alpha1.File{Path: filepath.ToSlash(rel), Mode: int32(info.Mode().Perm()), Contents: data})
		resp.ObjectVersion = append(resp.ObjectVersion, &v1alpha1.ObjectVersion{Id: "file/" + filepath.ToSlash(rel), Version: hex.EncodeToString(sum[:6])})
		return nil
	})
	if errors.Is(err, fs.ErrNotExist) {
		return status.Errorf(codes.NotFound, "no objects at %q", dir)
	}
	if err != nil {
		return status.Error(codes.Internal, err.Error())
	}
	return nil
}

// codeNamed is the gRPC code with that name (PermissionDenied, NotFound...).
func codeNamed(name string) codes.Code {
	for c := codes.OK; c <= codes.Unauthenticated; c++ {
		if c.String() == name {
			return c
		}
	}
	return codes.Unknown
}
