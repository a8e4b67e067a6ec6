package tokencache

import (
	"context"
	"testing"
	"time"
)

// BenchmarkGetHit is the hot path: a cached, fresh token. It must not allocate.
func BenchmarkGetHit(b *testing.B) {
	src := SourceFunc(func(context.Context, Key) (Token, error) {
		return Token{AccessToken: "t", ExpiresOn: time.Now().Add(time.Hour)}, nil
	})
	c := New(src, Options{})
	ctx := context.Background()
	if _, err := c.Get(ctx, key1); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Get(ctx, key1); err != nil {
				b.Fatal(err)
			}
		}
	})
}
