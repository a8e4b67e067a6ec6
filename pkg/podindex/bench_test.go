package podindex

import (
	"fmt"
	"net/netip"
	"testing"
)

// BenchmarkPodByIP looks up addresses in an index of a full node (110 pods)
// from parallel goroutines: the cost of step 3 of every token request.
func BenchmarkPodByIP(b *testing.B) {
	ix := newIndex()
	var addrs []netip.Addr
	for i := range 110 {
		ip := fmt.Sprintf("10.244.0.%d", i+2)
		ix.observe(newPod(b, fmt.Sprintf("pod-%d", i), fmt.Sprintf("uid-%d", i), []string{ip}))
		addrs = append(addrs, netip.MustParseAddr(ip))
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := ix.PodByIP(addrs[i%len(addrs)], 0); !ok {
				b.Fatal("not found")
			}
			i++
		}
	})
}

// BenchmarkPodByName is the same for /host/token/ lookups.
func BenchmarkPodByName(b *testing.B) {
	ix := newIndex()
	var names []string
	for i := range 110 {
		name := fmt.Sprintf("pod-%d", i)
		ix.observe(newPod(b, name, fmt.Sprintf("uid-%d", i), []string{fmt.Sprintf("10.244.0.%d", i+2)}))
		names = append(names, name)
	}
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok := ix.PodByName("apps", names[i%len(names)]); !ok {
				b.Fatal("not found")
			}
			i++
		}
	})
}
