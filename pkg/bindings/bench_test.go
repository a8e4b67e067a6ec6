package bindings

import (
	"fmt"
	"testing"

	"github.com/kvnode/kvnode/pkg/podauth"
)

// BenchmarkIdentitiesFor measures step 4 of a token request for pods bound
// through a ServiceAccount, through a binding, and through both, with 1000
// namespaces of bindings in the maps.
func BenchmarkIdentitiesFor(b *testing.B) {
	r := newResolver(Config{})
	for i := range 1000 {
		ns := fmt.Sprintf("ns-%d", i)
		r.bySA[saKey{ns, "app"}] = []podauth.Identity{wi(fmt.Sprintf("client-%d", i), "tenant")}
		r.bySelector[selectorKey{ns, "web"}] = []podauth.Identity{mi(fmt.Sprintf("mi-%d", i), "res"), mi(fmt.Sprintf("mj-%d", i), "res")}
	}
	for _, bc := range []struct {
		name string
		pod  podauth.Pod
		want int
	}{
		{"ServiceAccount", pod("ns-500", "app", ""), 1},
		{"binding", pod("ns-500", "other", "web"), 2},
		{"both", pod("ns-500", "app", "web"), 3},
		{"none", pod("ns-500", "other", "api"), 0},
	} {
		b.Run(bc.name, func(b *testing.B) {
			if got := len(r.IdentitiesFor(bc.pod)); got != bc.want {
				b.Fatalf("got %d identities, want %d", got, bc.want)
			}
			b.ReportAllocs()
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if len(r.IdentitiesFor(bc.pod)) != bc.want {
						b.Fatal("wrong identities")
					}
				}
			})
		})
	}
}
