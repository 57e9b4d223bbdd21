package main

import (
	"os"
	"strings"
	"testing"
)

func files(m map[string]string) func(string) ([]byte, error) {
	return func(name string) ([]byte, error) {
		v, ok := m[name]
		if !ok {
			return nil, os.ErrNotExist
		}
		return []byte(v), nil
	}
}

func TestMemoryLimit(t *testing.T) {
	const v2, v1 = "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"
	tests := []struct {
		name       string
		flag, env  string
		files      map[string]string
		want       int64
		wantReason string
	}{
		{name: "cgroup v2 limit", flag: "auto", files: map[string]string{v2: "268435456\n"}, want: 241591910, wantReason: "90% of the container's limit of 268435456 bytes"},
		{name: "cgroup v1 limit", flag: "auto", files: map[string]string{v1: "536870912\n"}, want: 483183820, wantReason: v1},
		{name: "v2 without a limit", flag: "auto", files: map[string]string{v2: "max\n"}, wantReason: "no memory limit"},
		{name: "v1 without a limit", flag: "auto", files: map[string]string{v1: "9223372036854771712\n"}, wantReason: "no memory limit"},
		{name: "no cgroup", flag: "auto", files: map[string]string{}, wantReason: "no cgroup memory limit found"},
		{name: "garbage", flag: "auto", files: map[string]string{v2: "lots"}, wantReason: `"lots" is not a number`},
		{name: "explicit", flag: "300Mi", files: map[string]string{v2: "268435456"}, want: 300 << 20, wantReason: "--memory-limit"},
		{name: "none", flag: "none", files: map[string]string{v2: "268435456"}, wantReason: "--memory-limit=none"},
		{name: "GOMEMLIMIT wins", flag: "300Mi", env: "100MiB", files: map[string]string{v2: "268435456"}, wantReason: "GOMEMLIMIT"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, reason := memoryLimit(tc.flag, tc.env, files(tc.files))
			if got != tc.want || !strings.Contains(reason, tc.wantReason) {
				t.Errorf("memoryLimit = %d, %q; want %d, reason containing %q", got, reason, tc.want, tc.wantReason)
			}
		})
	}
}

func TestParseMemoryLimit(t *testing.T) {
	for _, ok := range []string{"auto", "none", "200Mi", "1G", "268435456"} {
		if err := parseMemoryLimit(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "lots", "-5Mi", "0"} {
		err := parseMemoryLimit(bad)
		if err == nil || !strings.Contains(err.Error(), "-memory-limit") {
			t.Errorf("%q: error %v, want one naming -memory-limit", bad, err)
		}
	}
}
