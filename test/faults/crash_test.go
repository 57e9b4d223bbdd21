package faults

import (
	"cmp"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	mtlsv1alpha1 "github.com/agentmesh/agentmesh/api/v1alpha1"
	"github.com/agentmesh/agentmesh/internal/ca"
	"github.com/agentmesh/agentmesh/test/cluster"
)

// Settings of the crash test; the environment variables override them.
const (
	// crashIdentities is how many identities are created
	// (AGENTMESH_FAULTS_IDENTITIES).
	crashIdentities = 1000
	crashNamespaces = 5
	// crashChaos is how long the kills go on after the rotation started
	// (AGENTMESH_FAULTS_CHAOS).
	crashChaos = 40 * time.Second
	// killMin and killMax bound the life of one manager run.
	killMin, killMax = time.Second, 5 * time.Second
	// Every deleteEvery-th identity is deleted mid-run, and every
	// deleteEvery-th one after an offset of deleteEvery/2 gets a new
	// spec.secretName.
	deleteEvery = 20
)

// TestCrashAnywhere SIGKILLs the manager at random moments (a seeded
// schedule: AGENTMESH_FAULTS_SEED repeats one) while it issues a thousand
// identities in five namespaces, and while it rotates the CA
// (rotate-ca=now, asked for part-way through the issuance), restarting it
// each time; meanwhile some identities are deleted and others get a new
// spec.secretName. Once the kills stop, the cluster must be where an
// operator that never crashed would have left it: every identity Ready, every
// Secret's key its certificate's, every certificate for its identity and
// trusted by every bundle, nothing left over, the rotation finished.
func TestCrashAnywhere(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("AGENTMESH_FAULTS_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("AGENTMESH_FAULTS_SEED: %v", err)
		}
		seed = v
	}
	t.Logf("kill schedule seed %d (AGENTMESH_FAULTS_SEED=%d repeats it)", seed, seed)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	n := envInt(t, "AGENTMESH_FAULTS_IDENTITIES", crashIdentities)
	chaosFor := crashChaos
	if s := os.Getenv("AGENTMESH_FAULTS_CHAOS"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			t.Fatalf("AGENTMESH_FAULTS_CHAOS: %v", err)
		}
		chaosFor = d
	}

	start := time.Now()
	e := newEnv(t, cluster.Options{ControllerManager: true},
		// Short enough for the rotation to finish within the kills, long
		// enough for kills to land in each of its phases.
		"--ca-propagation-grace=3s", "--ca-reissue-rate=100")
	ctx := t.Context()
	k8s := e.k8s
	var namespaces []string
	for i := range crashNamespaces {
		namespaces = append(namespaces, fmt.Sprintf("tenant-%d", i))
	}
	cluster.CreateNamespaces(t, k8s, namespaces...)

	ch := newChaos(t, e, rng)
	defer ch.stop()

	var ids []*mtlsv1alpha1.AgentIdentity
	for i := range n {
		ids = append(ids, identity(namespaces[i%crashNamespaces], fmt.Sprintf("agent-%04d", i), mtlsv1alpha1.AgentIdentitySpec{}))
	}
	createAll(t, k8s, ids, 8)
	t.Logf("%d identities created after %s", n, time.Since(start).Round(time.Millisecond))

	// The rotation starts part-way through the issuance.
	cluster.EventuallyEvery(t, 500*time.Millisecond, 3*time.Minute, "a third of the identities issued", func() error {
		issued, err := countIssued(ctx, k8s)
		if err != nil {
			return err
		}
		if issued < n/3 {
			return fmt.Errorf("%d of %d issued", issued, n)
		}
		return nil
	})
	caKey := types.NamespacedName{Namespace: operatorNamespace, Name: caSecretName}
	caSecret := &corev1.Secret{}
	if err := k8s.Get(ctx, caKey, caSecret); err != nil {
		t.Fatal(err)
	}
	firstCA, err := certsOf(caSecret.Data[mtlsv1alpha1.SecretCertKey])
	if err != nil || len(firstCA) == 0 {
		t.Fatalf("the CA Secret's tls.crt: %v", err)
	}
	oldSerial := ca.SerialHex(firstCA[0].SerialNumber)
	patch := client.RawPatch(types.MergePatchType, []byte(`{"metadata":{"annotations":{"`+ca.AnnotationRotate+`":"now"}}}`))
	if err := k8s.Patch(ctx, caSecret, patch); err != nil {
		t.Fatal(err)
	}
	rotationAsked := time.Now()
	ch.rotating.Store(true)
	issued, _ := countIssued(ctx, k8s)
	t.Logf("rotate-ca=now on CA %s after %s, with %d of %d identities issued", oldSerial, time.Since(start).Round(time.Millisecond), issued, n)

	// Mid-run, while the kills go on: delete some identities, move the
	// Secret of others.
	time.Sleep(time.Duration(2+rng.IntN(4)) * time.Second)
	deleted := map[types.NamespacedName]bool{}
	renamed := map[types.NamespacedName]string{}
	for i, id := range ids {
		key := client.ObjectKeyFromObject(id)
		switch i % deleteEvery {
		case 0:
			if err := k8s.Delete(ctx, id); err != nil {
				t.Fatal(err)
			}
			deleted[key] = true
		case deleteEvery / 2:
			name := id.Name + "-moved"
			if err := retryUpdate(ctx, k8s, key, func(a *mtlsv1alpha1.AgentIdentity) { a.Spec.SecretName = name }); err != nil {
				t.Fatal(err)
			}
			renamed[key] = name
		}
	}
	issued, _ = countIssued(ctx, k8s)
	t.Logf("deleted %d identities and moved the Secret of %d after %s (%d issued)", len(deleted), len(renamed),
		time.Since(start).Round(time.Millisecond), issued)

	if d := time.Until(rotationAsked.Add(chaosFor)); d > 0 {
		time.Sleep(d)
	}
	kills, phases := ch.stop()
	t.Logf("kills stopped after %s: %d SIGKILLs, %d manager runs; rotation phase at each kill: %v",
		time.Since(start).Round(time.Millisecond), kills, e.runs, phases)
	if kills < 5 || phases[string(ca.PhasePropagating)]+phases[string(ca.PhaseReissuing)] == 0 {
		t.Errorf("%d kills, none during the rotation: the test proves little", kills)
	}

	// The last run brings everything to its end state.
	var st rotationState
	cluster.EventuallyEvery(t, time.Second, 3*time.Minute, "the rotation finished and every identity Ready on the new CA", func() error {
		var err error
		st, err = settled(ctx, k8s, oldSerial)
		return err
	})
	t.Logf("settled %s after the kills stopped (%s in all): CA %s -> %s", time.Since(ch.stoppedAt).Round(time.Millisecond),
		time.Since(start).Round(time.Millisecond), oldSerial, st.active)

	live := map[types.NamespacedName]*mtlsv1alpha1.AgentIdentity{}
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := k8s.List(ctx, list); err != nil {
		t.Fatal(err)
	}
	for i := range list.Items {
		live[client.ObjectKeyFromObject(&list.Items[i])] = &list.Items[i]
	}
	if want := n - len(deleted); len(live) != want {
		t.Errorf("%d identities, want %d", len(live), want)
	}
	for key := range deleted {
		if live[key] != nil {
			t.Errorf("deleted identity %s still exists", key)
		}
	}
	for key, name := range renamed {
		if id := live[key]; id != nil && (id.EffectiveSecretName() != name || id.Status.SecretName != name) {
			t.Errorf("identity %s: Secret %s (status %s), want %s", key, id.EffectiveSecretName(), id.Status.SecretName, name)
		}
	}

	// Nothing left over: the objects of deleted identities went with them
	// (garbage collection), a moved Secret's previous one was deleted.
	var secrets corev1.SecretList
	var configMaps corev1.ConfigMapList
	cluster.EventuallyEvery(t, time.Second, 2*time.Minute, "no orphaned Secret or ConfigMap", func() error {
		if err := k8s.List(ctx, &secrets, client.MatchingLabels{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue}); err != nil {
			return err
		}
		if err := k8s.List(ctx, &configMaps, client.MatchingLabels{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue}); err != nil {
			return err
		}
		return leftovers(live, secrets.Items, configMaps.Items)
	})

	checkSecrets(t, live, secrets.Items, configMaps.Items, st)
	e.noKeyInLog(t)
	for _, l := range e.logLines(t) {
		if strings.Contains(l.Msg, "panic") || strings.Contains(l.Error, "panic") {
			t.Errorf("the manager's log has a panic: %s %s", l.Msg, l.Error)
		}
	}
}

// rotationState is the CA the rotation ended on, and its bundle.
type rotationState struct {
	active string
	anchor *x509.Certificate
}

// settled says whether the rotation is over (Stable, a new active CA, no
// next or retired CA, one anchor in the CA Secret) and every identity is
// Ready/Issued on the new CA for its current spec.
func settled(ctx context.Context, k8s client.Client, oldSerial string) (rotationState, error) {
	var none rotationState
	st, err := rotationStatus(ctx, k8s)
	if err != nil {
		return none, err
	}
	switch {
	case st.Phase != ca.PhaseStable:
		return none, fmt.Errorf("rotation in %s, progress %+v", st.Phase, st.Progress)
	case st.Active.Serial == oldSerial:
		return none, fmt.Errorf("the active CA is still %s", oldSerial)
	case st.Next != nil || len(st.Retired) > 0:
		return none, fmt.Errorf("next %v, retired %v", st.Next, st.Retired)
	}
	sec := &corev1.Secret{}
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: operatorNamespace, Name: caSecretName}, sec); err != nil {
		return none, err
	}
	anchors, err := certsOf(sec.Data[mtlsv1alpha1.SecretTrustKey])
	if err != nil {
		return none, err
	}
	if len(anchors) != 1 || ca.SerialHex(anchors[0].SerialNumber) != st.Active.Serial {
		return none, fmt.Errorf("the CA Secret's ca.crt has %d anchors, want only the active CA %s", len(anchors), st.Active.Serial)
	}
	if _, ok := sec.Data["next.crt"]; ok {
		return none, errors.New("the CA Secret still has next.crt")
	}
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := k8s.List(ctx, list); err != nil {
		return none, err
	}
	var notReady []string
	for i := range list.Items {
		id := &list.Items[i]
		err := cluster.Condition{Type: mtlsv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: mtlsv1alpha1.ReasonIssued, Current: true}.Matches(id)
		switch {
		case err != nil:
			notReady = append(notReady, id.Namespace+"/"+id.Name+": "+err.Error())
		case id.Status.CASerial != st.Active.Serial:
			notReady = append(notReady, fmt.Sprintf("%s/%s: on CA %s", id.Namespace, id.Name, id.Status.CASerial))
		}
	}
	if len(notReady) > 0 {
		sort.Strings(notReady)
		return none, fmt.Errorf("%d identities not done, e.g. %s", len(notReady), notReady[0])
	}
	// Once the previous CA has left ca.crt, the operator takes it out of
	// every bundle it wrote; that follows within moments, not at once.
	if stale, err := bundlesHolding(ctx, k8s, oldSerial); err != nil || stale != "" {
		return none, cmp.Or(err, fmt.Errorf("%s still holds the previous CA %s", stale, oldSerial))
	}
	return rotationState{active: st.Active.Serial, anchor: anchors[0]}, nil
}

// bundlesHolding names a bundle agentmesh wrote (an identity Secret's
// ca.crt, a trust ConfigMap's bundle.pem) that still holds the CA of the
// serial, or "".
func bundlesHolding(ctx context.Context, k8s client.Client, serial string) (string, error) {
	holds := func(b []byte) bool {
		certs, err := certsOf(b)
		if err != nil {
			return true
		}
		for _, c := range certs {
			if ca.SerialHex(c.SerialNumber) == serial {
				return true
			}
		}
		return false
	}
	managed := client.MatchingLabels{mtlsv1alpha1.LabelManagedBy: mtlsv1alpha1.ManagedByValue}
	var secrets corev1.SecretList
	if err := k8s.List(ctx, &secrets, managed); err != nil {
		return "", err
	}
	for _, sec := range secrets.Items {
		if b, ok := sec.Data[mtlsv1alpha1.SecretTrustKey]; ok && sec.Namespace != operatorNamespace && holds(b) {
			return "Secret " + sec.Namespace + "/" + sec.Name, nil
		}
	}
	var cms corev1.ConfigMapList
	if err := k8s.List(ctx, &cms, managed); err != nil {
		return "", err
	}
	for _, cm := range cms.Items {
		if b, ok := cm.Data[mtlsv1alpha1.TrustBundleKey]; ok && cm.Namespace != operatorNamespace && holds([]byte(b)) {
			return "ConfigMap " + cm.Namespace + "/" + cm.Name, nil
		}
	}
	return "", nil
}

// leftovers names the agentmesh-labelled Secrets and ConfigMaps that are
// not the current Secret or trust ConfigMap of a live identity (owned by
// it), and the live identities that lack one.
func leftovers(live map[types.NamespacedName]*mtlsv1alpha1.AgentIdentity, secrets []corev1.Secret, configMaps []corev1.ConfigMap) error {
	wantSecret, wantCM := map[types.NamespacedName]types.UID{}, map[types.NamespacedName]types.UID{}
	for key, id := range live {
		wantSecret[types.NamespacedName{Namespace: key.Namespace, Name: id.EffectiveSecretName()}] = id.UID
		wantCM[types.NamespacedName{Namespace: key.Namespace, Name: id.TrustConfigMapName()}] = id.UID
	}
	var extra []string
	check := func(kind string, obj metav1.Object, want map[types.NamespacedName]types.UID) {
		if obj.GetNamespace() == operatorNamespace {
			return
		}
		key := types.NamespacedName{Namespace: obj.GetNamespace(), Name: obj.GetName()}
		uid, ok := want[key]
		if !ok || !ownedByUID(obj, uid) {
			extra = append(extra, kind+" "+key.String())
			return
		}
		delete(want, key)
	}
	for i := range secrets {
		check("Secret", &secrets[i], wantSecret)
	}
	for i := range configMaps {
		check("ConfigMap", &configMaps[i], wantCM)
	}
	if len(extra) > 0 || len(wantSecret) > 0 || len(wantCM) > 0 {
		sort.Strings(extra)
		return fmt.Errorf("%d objects left over (e.g. %v), %d Secrets and %d ConfigMaps missing",
			len(extra), extra[:min(len(extra), 5)], len(wantSecret), len(wantCM))
	}
	return nil
}

func ownedByUID(obj metav1.Object, uid types.UID) bool {
	for _, r := range obj.GetOwnerReferences() {
		if r.UID == uid && r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}

// checkSecrets checks every identity Secret: the key matches the
// certificate, the certificate is for the identity, and it verifies
// against every bundle in the cluster (each Secret's ca.crt, each trust
// ConfigMap's bundle.pem), which hold the active CA only.
func checkSecrets(t *testing.T, live map[types.NamespacedName]*mtlsv1alpha1.AgentIdentity, secrets []corev1.Secret, configMaps []corev1.ConfigMap, st rotationState) {
	t.Helper()
	// Bundles are compared by content: every distinct one is a pool.
	bundles := map[string]string{}
	for i := range secrets {
		s := &secrets[i]
		if s.Namespace != operatorNamespace {
			bundles[string(s.Data[mtlsv1alpha1.SecretTrustKey])] = "Secret " + s.Namespace + "/" + s.Name
		}
	}
	for i := range configMaps {
		cm := &configMaps[i]
		if cm.Namespace != operatorNamespace {
			bundles[cm.Data[mtlsv1alpha1.TrustBundleKey]] = "ConfigMap " + cm.Namespace + "/" + cm.Name
		}
	}
	var pools []*x509.CertPool
	var poolNames []string
	for b, where := range bundles {
		certs, err := certsOf([]byte(b))
		if err != nil || len(certs) == 0 {
			t.Errorf("%s: bundle unreadable (%d certificates): %v", where, len(certs), err)
			continue
		}
		for _, c := range certs {
			if ca.SerialHex(c.SerialNumber) != st.active {
				t.Errorf("%s: the bundle holds CA %s besides the active %s", where, ca.SerialHex(c.SerialNumber), st.active)
			}
		}
		pool := x509.NewCertPool()
		for _, c := range certs {
			pool.AddCert(c)
		}
		pools, poolNames = append(pools, pool), append(poolNames, where)
	}
	t.Logf("%d identities' Secrets and trust ConfigMaps checked, %d distinct bundles", len(live), len(bundles))
	byName := map[types.NamespacedName]*corev1.Secret{}
	for i := range secrets {
		byName[client.ObjectKeyFromObject(&secrets[i])] = &secrets[i]
	}
	bad := 0
	for key, id := range live {
		s := byName[types.NamespacedName{Namespace: key.Namespace, Name: id.EffectiveSecretName()}]
		if s == nil {
			t.Errorf("identity %s: no Secret %s", key, id.EffectiveSecretName())
			continue
		}
		leaf, err := leafOf(s)
		if err == nil {
			err = checkLeaf(leaf, key, id, pools, poolNames)
		}
		if err != nil {
			if bad++; bad <= 10 {
				t.Errorf("identity %s: %v", key, err)
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d identities in all with a bad Secret", bad)
	}
}

func checkLeaf(leaf *x509.Certificate, key types.NamespacedName, id *mtlsv1alpha1.AgentIdentity, pools []*x509.CertPool, poolNames []string) error {
	want := spiffeID(key.Namespace, key.Name)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		return fmt.Errorf("certificate for %v, want %s", leaf.URIs, want)
	}
	if got := ca.SerialHex(leaf.SerialNumber); got != id.Status.SerialNumber {
		return fmt.Errorf("certificate %s, the status says %s", got, id.Status.SerialNumber)
	}
	for i, pool := range pools {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
			return fmt.Errorf("certificate %s does not verify against the bundle of %s: %w", ca.SerialHex(leaf.SerialNumber), poolNames[i], err)
		}
	}
	return nil
}

// countIssued counts identities with a certificate.
func countIssued(ctx context.Context, k8s client.Client) (int, error) {
	list := &mtlsv1alpha1.AgentIdentityList{}
	if err := k8s.List(ctx, list); err != nil {
		return 0, err
	}
	n := 0
	for i := range list.Items {
		if list.Items[i].Status.SerialNumber != "" {
			n++
		}
	}
	return n, nil
}

// retryUpdate changes an identity, retrying on conflicts (the operator
// writes its status meanwhile).
func retryUpdate(ctx context.Context, k8s client.Client, key types.NamespacedName, mutate func(*mtlsv1alpha1.AgentIdentity)) error {
	for {
		id := &mtlsv1alpha1.AgentIdentity{}
		if err := k8s.Get(ctx, key, id); err != nil {
			return err
		}
		mutate(id)
		err := k8s.Update(ctx, id)
		if !apierrors.IsConflict(err) {
			return err
		}
	}
}

func envInt(t *testing.T, name string, def int) int {
	t.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	v, err := strconv.Atoi(s)
	if err != nil || v <= 0 {
		t.Fatalf("%s=%q: want a positive number", name, s)
	}
	return v
}

// chaos runs the manager and SIGKILLs it at random moments, starting it
// again each time, until stop.
type chaos struct {
	t    *testing.T
	e    *env
	rng  *rand.Rand
	quit chan struct{}
	done chan struct{}
	once sync.Once
	// rotating is set once the rotation was asked for: kills before it
	// are counted as "issuing".
	rotating atomic.Bool

	kills     int
	phases    map[string]int
	stoppedAt time.Time
	// last is the run left running by stop.
	last *cluster.Manager
}

func newChaos(t *testing.T, e *env, rng *rand.Rand) *chaos {
	c := &chaos{t: t, e: e, rng: rng, quit: make(chan struct{}), done: make(chan struct{}), phases: map[string]int{}}
	m := e.startManager(t)
	started := false
	t.Cleanup(func() {
		if !started {
			_ = m.Stop(15 * time.Second)
			return
		}
		c.stop()
		if c.last != nil {
			if err := c.last.Stop(15 * time.Second); err != nil {
				t.Errorf("the last manager run: %v", err)
			}
		}
	})
	waitReady(t, m, 2*time.Minute)
	started = true
	go c.run(m)
	return c
}

func (c *chaos) run(m *cluster.Manager) {
	defer close(c.done)
	for {
		wait := killMin + time.Duration(c.rng.Int64N(int64(killMax-killMin)))
		select {
		case <-c.quit:
			c.last = m
			return
		case <-m.Exited():
			// A manager that dies on its own is a bug the kills found.
			c.t.Errorf("manager run %d exited by itself", c.e.runs)
			c.last = nil
			return
		case <-time.After(wait):
		}
		phase := "issuing"
		if c.rotating.Load() {
			phase = "unknown"
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if st, err := rotationStatus(ctx, c.e.k8s); err == nil {
				phase = string(st.Phase)
			}
			cancel()
		}
		_ = syscall.Kill(m.Pid(), syscall.SIGKILL)
		<-m.Exited()
		c.kills++
		c.phases[phase]++
		fmt.Fprintf(c.e.log, "=== faults: SIGKILL %d of manager run %d (rotation phase %s)\n", c.kills, c.e.runs, phase)
		var err error
		m, err = cluster.StartManager(cluster.ManagerOptions{Binary: managerBin, Kubeconfig: c.e.kubeconfig, Args: c.e.args, Output: c.e.log})
		if err != nil {
			c.t.Errorf("starting the manager again: %v", err)
			return
		}
		c.e.runs++
		fmt.Fprintf(c.e.log, "=== faults: manager run %d starts\n", c.e.runs)
	}
}

// stop ends the kills, leaving the last run of the manager running, and
// returns the number of kills and the rotation phase at each.
func (c *chaos) stop() (int, map[string]int) {
	c.once.Do(func() {
		close(c.quit)
		<-c.done
		c.stoppedAt = time.Now()
	})
	return c.kills, c.phases
}
