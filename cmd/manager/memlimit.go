package main

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"
)

// The operator's memory grows with the identities it caches (about 10 KiB
// of live heap each: the identity, its Secret and trust ConfigMap, its
// metrics). Go's collector lets the heap grow to twice what is live before
// it collects, so without a limit the process can reach the container's
// memory limit and be killed while half of its heap is garbage. A soft limit
// below the container's makes the collector work harder instead.

// memoryLimitAuto is the default of --memory-limit.
const memoryLimitAuto = "auto"

// memoryLimitShare is the part of the container's limit given to Go's heap
// and runtime under "auto"; the rest covers the binary's mapped pages and
// what the runtime does not account.
const memoryLimitShare = 0.9

// cgroupMemoryFiles are where the container's memory limit is read: cgroup
// v2, then v1.
var cgroupMemoryFiles = []string{"/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// parseMemoryLimit checks the value of --memory-limit: "auto", "none" or a
// quantity such as 200Mi.
func parseMemoryLimit(v string) error {
	switch v {
	case memoryLimitAuto, "none":
		return nil
	}
	q, err := resource.ParseQuantity(v)
	if err != nil || q.Sign() <= 0 {
		return fmt.Errorf("invalid value %q for flag -memory-limit: want auto, none or a positive quantity such as 200Mi", v)
	}
	return nil
}

// memoryLimit resolves the soft memory limit to apply, in bytes (0: leave the
// runtime alone), and says where it came from. GOMEMLIMIT, when set, wins:
// the runtime has already applied it.
func memoryLimit(flagValue, gomemlimit string, readFile func(string) ([]byte, error)) (int64, string) {
	if gomemlimit != "" {
		return 0, "GOMEMLIMIT is set"
	}
	switch flagValue {
	case "none":
		return 0, "--memory-limit=none"
	case memoryLimitAuto:
		limit, file, err := containerMemoryLimit(readFile)
		if err != nil {
			return 0, err.Error()
		}
		return int64(float64(limit) * memoryLimitShare), fmt.Sprintf("%.0f%% of the container's limit of %d bytes (%s)", memoryLimitShare*100, limit, file)
	}
	q := resource.MustParse(flagValue) // checked by parseMemoryLimit
	return q.Value(), "--memory-limit"
}

// containerMemoryLimit reads the cgroup memory limit of this process's
// container.
func containerMemoryLimit(readFile func(string) ([]byte, error)) (int64, string, error) {
	for _, f := range cgroupMemoryFiles {
		b, err := readFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, f, fmt.Errorf("reading %s: %w", f, err)
		}
		s := strings.TrimSpace(string(b))
		if s == "max" {
			return 0, f, errors.New("the container has no memory limit")
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, f, fmt.Errorf("reading %s: %q is not a number", f, s)
		}
		// cgroup v1 reports "no limit" as a huge page-aligned number.
		if n <= 0 || n >= math.MaxInt64/2 {
			return 0, f, errors.New("the container has no memory limit")
		}
		return n, f, nil
	}
	return 0, "", errors.New("no cgroup memory limit found")
}
