package main

import (
	"context"
	"crypto/rand"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

const unrelatedNamespace = "bench-unrelated"

// unrelatedResult is the unlabelled Secrets added to the cluster, and what
// they did to the running manager.
type unrelatedResult struct {
	Large, Small int
	Elapsed      time.Duration
	// Before and After are the running manager's memory around the adds.
	Before, After procMem
}

// largeSecretBytes keeps a "1 MiB" Secret under the API server's 1 MiB
// limit on a Secret's data.
const largeSecretBytes = 1<<20 - 1024

// addUnrelated creates Secrets that agentmesh has nothing to do with: no
// label, in a namespace without identities.
func (e *env) addUnrelated(ctx context.Context) (unrelatedResult, error) {
	res := unrelatedResult{Large: e.cfg.UnrelatedLarge, Small: e.cfg.UnrelatedSmall}
	if err := e.ensureNamespace(ctx, unrelatedNamespace); err != nil {
		return res, err
	}
	var err error
	if res.Before, err = readProcMem(e.mgr.Pid()); err != nil {
		return res, err
	}
	blob := make([]byte, largeSecretBytes)
	if _, err := rand.Read(blob); err != nil {
		return res, err
	}
	small := make([]byte, 64)
	if _, err := rand.Read(small); err != nil {
		return res, err
	}
	say("unrelated: %d Secrets of 1 MiB and %d small ones, unlabelled, in %s", res.Large, res.Small, unrelatedNamespace)
	start := time.Now()
	if err := parallel(ctx, res.Large, 4, func(ctx context.Context, i int) error {
		return e.cl.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: unrelatedNamespace, Name: fmt.Sprintf("large-%04d", i)},
			Data:       map[string][]byte{"blob": blob},
		})
	}); err != nil {
		return res, fmt.Errorf("unrelated: creating a 1 MiB Secret: %w", err)
	}
	if err := parallel(ctx, res.Small, 32, func(ctx context.Context, i int) error {
		return e.cl.Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Namespace: unrelatedNamespace, Name: fmt.Sprintf("small-%05d", i)},
			Data:       map[string][]byte{"value": small},
		})
	}); err != nil {
		return res, fmt.Errorf("unrelated: creating a small Secret: %w", err)
	}
	res.Elapsed = time.Since(start)
	// Give the running manager's informers time to see anything they would.
	select {
	case <-ctx.Done():
		return res, ctx.Err()
	case <-time.After(5 * time.Second):
	}
	if res.After, err = readProcMem(e.mgr.Pid()); err != nil {
		return res, err
	}
	say("unrelated: added in %s; running manager RSS %s -> %s", res.Elapsed.Round(time.Millisecond), mib(res.Before.RSS), mib(res.After.RSS))
	return res, nil
}
