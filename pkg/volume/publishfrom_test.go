package volume

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/kvnode/kvnode/pkg/atomicwriter"
)

func TestPublishFromMountsFirstAndRollsBack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: mounting tmpfs needs root")
	}
	p := NewPublisher(NewMounter(), nil, nil, Options{})
	target := filepath.Join(t.TempDir(), "pods", "uid-1", "mount")
	require.NoError(t, os.MkdirAll(filepath.Dir(target), 0o750))
	t.Cleanup(func() { _ = p.Unpublish(target) })
	refused := errors.New("the plugin refused")

	for run := range 2 { // a failed first publish leaves nothing, twice
		_, err := p.PublishFrom(ctx(t), target, nil, func(_ context.Context, dir string) (map[string]atomicwriter.File, error) {
			assert.True(t, isTmpfs(t, dir), "the plugin runs with the tmpfs mounted")
			return nil, refused
		})
		require.ErrorIs(t, err, refused, "run %d", run)
		assert.NoDirExists(t, target, "run %d", run)
	}

	files := map[string]atomicwriter.File{"db/password": {Data: []byte("pw"), Mode: 0o600}, "ca.crt": {Data: []byte("ca")}}
	for run := range 2 {
		res, err := p.PublishFrom(ctx(t), target, nil, func(context.Context, string) (map[string]atomicwriter.File, error) { return files, nil })
		require.NoError(t, err)
		assert.Equal(t, run == 0, res.Mounted, "run %d", run)
		assert.Equal(t, run == 0, res.Changed, "run %d", run)
		assert.Equal(t, map[string][]byte{"db/password": []byte("pw"), "ca.crt": []byte("ca")}, res.Files)
	}
	assert.True(t, isTmpfs(t, target))
	b, err := os.ReadFile(filepath.Join(target, "db", "password"))
	require.NoError(t, err)
	assert.Equal(t, "pw", string(b))

	// A failed republish keeps the volume and its files.
	_, err = p.PublishFrom(ctx(t), target, nil, func(context.Context, string) (map[string]atomicwriter.File, error) { return nil, refused })
	require.ErrorIs(t, err, refused)
	assert.True(t, isTmpfs(t, target))
	b, err = os.ReadFile(filepath.Join(target, "ca.crt"))
	require.NoError(t, err)
	assert.Equal(t, "ca", string(b))

	// A payload the writer refuses (a file that is also a directory) is
	// rolled back like a refusal.
	other := filepath.Join(filepath.Dir(target), "mount2")
	_, err = p.PublishFrom(ctx(t), other, nil, func(context.Context, string) (map[string]atomicwriter.File, error) {
		return map[string]atomicwriter.File{"a": {}, "a/b": {}}, nil
	})
	require.ErrorIs(t, err, atomicwriter.ErrInvalidPayload)
	assert.NoDirExists(t, other)

	require.NoError(t, p.Unpublish(target))
	assert.NoDirExists(t, target)
}
