package main

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestLayerTarIsReproducible checks that a layer's bytes depend only on its
// files: order, ownership and timestamps of the build do not show, so the
// images' content hashes (and the cache) are stable.
func TestLayerTarIsReproducible(t *testing.T) {
	a := []entry{file("etc/passwd", 0o644, "root:x:0:0::/:/sbin/nologin\n"), dir("tmp", 0o1777), dir("etc", 0o755),
		{name: "usr/sbin/iptables", mode: 0o777, typ: tar.TypeSymlink, linkname: "iptables-nft"}}
	b := []entry{a[3], a[2], a[1], a[0]}
	la, err := layerTar(a)
	require.NoError(t, err)
	lb, err := layerTar(b)
	require.NoError(t, err)
	assert.Equal(t, la, lb)

	tr := tar.NewReader(bytes.NewReader(la))
	var names []string
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		names = append(names, h.Name)
		assert.Zero(t, h.Uid)
		assert.True(t, h.ModTime.IsZero() || h.ModTime.Unix() == 0, "%s has no timestamp", h.Name)
		if h.Name == "tmp/" {
			assert.Equal(t, int64(0o1777), h.Mode, "/tmp is sticky and world-writable")
		}
	}
	assert.Equal(t, []string{"etc/", "etc/passwd", "tmp/", "usr/sbin/iptables"}, names)
}
