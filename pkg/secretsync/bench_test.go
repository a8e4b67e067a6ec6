package secretsync

import (
	"context"
	"testing"

	"k8s.io/client-go/kubernetes/fake"

	"github.com/kvnode/kvnode/pkg/spc"
)

// BenchmarkSyncUnchanged is kubelet's periodic republish of a volume whose
// Secrets are already synced: no request, only building and digesting.
func BenchmarkSyncUnchanged(b *testing.B) {
	c := newChain(b, "RSA")
	for _, bc := range []struct {
		name  string
		class []spc.SecretObject
		files map[string][]byte
	}{
		{"opaque", syncClass, map[string][]byte{"secretalias": []byte(plantedValue)}},
		{"tls", []spc.SecretObject{{SecretName: "ingress-tls-csi", Type: "kubernetes.io/tls", Data: data("cert", "tls.key", "cert", "tls.crt")}},
			map[string][]byte{"cert": c.bundle(b)}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			cs := fake.NewClientset()
			s := New(clientsetWriter{cs}, Options{})
			ctx := context.Background()
			if err := s.Sync(ctx, testPod(0), bc.class, bc.files); err != nil {
				b.Fatal(err)
			}
			cs.ClearActions()
			b.ReportAllocs()
			for b.Loop() {
				if err := s.Sync(ctx, testPod(0), bc.class, bc.files); err != nil {
					b.Fatal(err)
				}
			}
			if n := len(cs.Actions()); n != 0 {
				b.Fatalf("%d requests", n)
			}
		})
	}
}
