package secretsync

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	clienttesting "k8s.io/client-go/testing"
	"k8s.io/klog/v2"
	"k8s.io/klog/v2/textlogger"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/kvnode/kvnode/pkg/spc"
)

// The unit tests of Syncer use client-go's fake clientset, which applies
// and patches like the API server closely enough to count requests; the
// e2e tests (test/e2e/secretsync_test.go) run the same paths against a real
// kube-apiserver with the chart's RBAC and admission policy.

var syncClass = []spc.SecretObject{{
	SecretName: "foosecret", Type: "Opaque", Labels: map[string]string{"environment": "test"},
	Data: data("secretalias", "username"),
}}

func testPod(i int) Pod {
	return Pod{Namespace: "apps", Name: fmt.Sprintf("web-%d", i), UID: types.UID(fmt.Sprintf("uid-%d", i))}
}

type syncFixture struct {
	cs     *fake.Clientset
	clock  *clocktesting.FakeClock
	syncer *Syncer
}

func newSyncFixture(t *testing.T) *syncFixture {
	t.Helper()
	cs := fake.NewClientset()
	clk := clocktesting.NewFakeClock(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	return &syncFixture{cs: cs, clock: clk, syncer: New(clientsetWriter{cs}, Options{Clock: clk, Resync: 10 * time.Minute})}
}

// requests returns the verbs of the requests since the last call, as
// "patch:apply" or "patch:strategic".
func (f *syncFixture) requests() []string {
	var out []string
	for _, a := range f.cs.Actions() {
		verb := a.GetVerb()
		if p, ok := a.(clienttesting.PatchAction); ok {
			verb += ":" + map[types.PatchType]string{types.ApplyYAMLPatchType: "apply", types.ApplyCBORPatchType: "apply", types.StrategicMergePatchType: "strategic"}[p.GetPatchType()]
		}
		out = append(out, verb)
	}
	f.cs.ClearActions()
	return out
}

func (f *syncFixture) secret(t *testing.T) *corev1.Secret {
	t.Helper()
	s, err := f.cs.CoreV1().Secrets("apps").Get(context.Background(), "foosecret", metav1.GetOptions{})
	require.NoError(t, err)
	f.cs.ClearActions()
	return s
}

func owners(s *corev1.Secret) []string {
	var out []string
	for _, o := range s.OwnerReferences {
		out = append(out, o.Kind+"/"+o.Name+"/"+string(o.UID))
	}
	return out
}

func TestSyncWritesOnlyWhatChanged(t *testing.T) {
	f := newSyncFixture(t)
	ctx := context.Background()
	files := map[string][]byte{"secretalias": []byte("v1")}

	require.NoError(t, f.syncer.Sync(ctx, testPod(0), syncClass, files))
	assert.Equal(t, []string{"patch:apply", "patch:strategic"}, f.requests(), "first publish: the content, then the pod as owner")
	s := f.secret(t)
	assert.Equal(t, map[string]string{"environment": "test", ManagedLabel: "true"}, s.Labels)
	assert.Equal(t, map[string][]byte{"username": []byte("v1")}, s.Data)
	assert.Equal(t, corev1.SecretTypeOpaque, s.Type)
	assert.Equal(t, []string{"Pod/web-0/uid-0"}, owners(s))

	require.NoError(t, f.syncer.Sync(ctx, testPod(0), syncClass, files))
	assert.Empty(t, f.requests(), "a republish with nothing changed sends nothing")

	require.NoError(t, f.syncer.Sync(ctx, testPod(1), syncClass, files))
	assert.Equal(t, []string{"patch:strategic"}, f.requests(), "a second consumer only adds itself as owner")
	assert.ElementsMatch(t, []string{"Pod/web-0/uid-0", "Pod/web-1/uid-1"}, owners(f.secret(t)))

	rotated := map[string][]byte{"secretalias": []byte("v2")}
	require.NoError(t, f.syncer.Sync(ctx, testPod(1), syncClass, rotated))
	assert.Equal(t, []string{"patch:apply"}, f.requests(), "a rotation applies the new content once")
	require.NoError(t, f.syncer.Sync(ctx, testPod(0), syncClass, rotated))
	assert.Empty(t, f.requests(), "the other pod on the node sees it applied")
	s = f.secret(t)
	assert.Equal(t, []byte("v2"), s.Data["username"])
	assert.ElementsMatch(t, []string{"Pod/web-0/uid-0", "Pod/web-1/uid-1"}, owners(s), "applying the content keeps the owners")

	f.clock.Step(10 * time.Minute)
	require.NoError(t, f.syncer.Sync(ctx, testPod(0), syncClass, rotated))
	assert.Equal(t, []string{"patch:apply", "patch:strategic"}, f.requests(), "after Resync the Syncer writes again")
	require.NoError(t, f.syncer.Sync(ctx, testPod(1), syncClass, rotated))
	assert.Equal(t, []string{"patch:strategic"}, f.requests())
}

func TestSyncCreatesADeletedSecretAgain(t *testing.T) {
	f := newSyncFixture(t)
	ctx := context.Background()
	files := map[string][]byte{"secretalias": []byte("v1")}
	require.NoError(t, f.syncer.Sync(ctx, testPod(0), syncClass, files))
	require.NoError(t, f.cs.CoreV1().Secrets("apps").Delete(ctx, "foosecret", metav1.DeleteOptions{}))
	f.requests()

	// A new consumer finds the Secret gone when it adds itself.
	require.NoError(t, f.syncer.Sync(ctx, testPod(1), syncClass, files))
	assert.Equal(t, []string{"patch:strategic", "patch:apply", "patch:strategic"}, f.requests())
	s := f.secret(t)
	assert.Equal(t, []byte("v1"), s.Data["username"])
	assert.Equal(t, []string{"Pod/web-1/uid-1"}, owners(s))
}

func TestSyncReportsEachEntryAndWritesTheGoodOnes(t *testing.T) {
	f := newSyncFixture(t)
	class := []spc.SecretObject{
		{SecretName: "bad", Type: "Opaque", Data: data("missing", "k")},
		syncClass[0],
		{SecretName: "token", Type: "kubernetes.io/service-account-token", Data: data("secretalias", "token")},
	}
	err := f.syncer.Sync(context.Background(), testPod(0), class, map[string][]byte{"secretalias": []byte(plantedValue)})
	errs := Errors(err)
	require.Len(t, errs, 2)
	assert.Equal(t, "secretObjects[0].data[0].objectName", errs[0].(*FieldError).Field)
	assert.Equal(t, "secretObjects[2].type", errs[1].(*FieldError).Field)
	assert.NotContains(t, err.Error(), plantedValue)
	assert.Equal(t, []string{"patch:apply", "patch:strategic"}, f.requests(), "only the good entry is written")
	assert.Equal(t, []byte(plantedValue), f.secret(t).Data["username"])
}

func TestSyncRetriesAFailedWrite(t *testing.T) {
	f := newSyncFixture(t)
	ctx := context.Background()
	files := map[string][]byte{"secretalias": []byte("v1")}
	fail := true
	f.cs.PrependReactor("patch", "secrets", func(a clienttesting.Action) (bool, runtime.Object, error) {
		if fail && a.(clienttesting.PatchAction).GetPatchType() == types.StrategicMergePatchType {
			return true, nil, fmt.Errorf("connection refused")
		}
		return false, nil, nil
	})
	err := f.syncer.Sync(ctx, testPod(0), syncClass, files)
	var we *WriteError
	require.ErrorAs(t, err, &we)
	assert.Equal(t, "add owner", we.Op)
	assert.Equal(t, "secretObjects[0]: Secret apps/foosecret: add owner: connection refused", we.Error())
	f.requests()

	fail = false
	require.NoError(t, f.syncer.Sync(ctx, testPod(0), syncClass, files))
	assert.Equal(t, []string{"patch:strategic"}, f.requests(), "the content was applied; only the owner is retried")
	assert.Equal(t, []string{"Pod/web-0/uid-0"}, owners(f.secret(t)))
}

func TestSyncOfOneSecretFromManyPublishesAppliesOnce(t *testing.T) {
	f := newSyncFixture(t)
	files := map[string][]byte{"secretalias": []byte("v1")}
	const pods = 16
	var wg sync.WaitGroup
	errs := make([]error, pods)
	for i := range pods {
		wg.Go(func() { errs[i] = f.syncer.Sync(context.Background(), testPod(i), syncClass, files) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	count := map[string]int{}
	for _, r := range f.requests() {
		count[r]++
	}
	assert.Equal(t, map[string]int{"patch:apply": 1, "patch:strategic": pods}, count)
	assert.Len(t, owners(f.secret(t)), pods)
}

func TestSyncWaitingForAnotherSyncLeavesWithItsContext(t *testing.T) {
	f := newSyncFixture(t)
	files := map[string][]byte{"secretalias": []byte("v1")}
	entered, release := make(chan struct{}), make(chan struct{})
	f.cs.PrependReactor("patch", "secrets", func(clienttesting.Action) (bool, runtime.Object, error) {
		select {
		case entered <- struct{}{}: // the first request hangs until released
			<-release
		default:
		}
		return false, nil, nil
	})
	first := make(chan error, 1)
	go func() { first <- f.syncer.Sync(context.Background(), testPod(0), syncClass, files) }()
	<-entered

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := f.syncer.Sync(ctx, testPod(1), syncClass, files)
	var we *WriteError
	require.ErrorAs(t, err, &we)
	assert.Equal(t, "wait for another sync of the Secret", we.Op)
	assert.ErrorIs(t, err, context.Canceled)

	close(release)
	require.NoError(t, <-first)
	require.NoError(t, f.syncer.Sync(context.Background(), testPod(1), syncClass, files))
	assert.ElementsMatch(t, []string{"Pod/web-0/uid-0", "Pod/web-1/uid-1"}, owners(f.secret(t)))
}

func TestSyncForgetsSecretsNothingSyncs(t *testing.T) {
	f := newSyncFixture(t)
	ctx := context.Background()
	files := map[string][]byte{"secretalias": []byte("v1")}
	require.NoError(t, f.syncer.Sync(ctx, testPod(0), syncClass, files))
	other := []spc.SecretObject{{SecretName: "other", Type: "Opaque", Data: data("secretalias", "k")}}
	f.clock.Step(10 * time.Minute)
	require.NoError(t, f.syncer.Sync(ctx, testPod(1), other, files))
	f.syncer.mu.Lock()
	defer f.syncer.mu.Unlock()
	assert.Len(t, f.syncer.secrets, 1, "the state of foosecret, untouched for a Resync, was dropped")
	assert.Contains(t, f.syncer.secrets, secretKey{"apps", "other"})
}

func TestSyncRefusesAPodWithoutIdentity(t *testing.T) {
	f := newSyncFixture(t)
	err := f.syncer.Sync(context.Background(), Pod{Namespace: "apps", Name: "web-0"}, syncClass, nil)
	assert.EqualError(t, err, "secretsync: the pod's namespace, name and UID are required")
	assert.NoError(t, f.syncer.Sync(context.Background(), Pod{}, nil, nil), "no secretObjects: nothing to do")
	assert.Empty(t, f.requests())
}

func TestCapVerbosityHidesClientBodies(t *testing.T) {
	var buf bytes.Buffer
	logger := textlogger.NewLogger(textlogger.NewConfig(textlogger.Output(&buf), textlogger.Verbosity(10)))
	capped := capVerbosity(logger.WithValues("pod", "apps/web-0"), maxLogV)
	capped.V(7).Info("kept")
	capped.V(8).Info("Request Body", "body", plantedValue)
	capped.WithName("client").V(9).Info("Response Body", "body", plantedValue)
	assert.Contains(t, buf.String(), `"kept" pod="apps/web-0"`)
	assert.NotContains(t, buf.String(), plantedValue)
	assert.False(t, klog.FromContext(klog.NewContext(context.Background(), capped)).V(8).Enabled())
}
