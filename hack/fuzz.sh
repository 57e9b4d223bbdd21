#!/usr/bin/env bash
# Runs every native Go fuzz target of the module (func FuzzXxx in a
# _test.go file) for FUZZTIME each, one after the other, since go test
# -fuzz takes one target at a time: `make fuzz` (60s each) for long runs,
# `make fuzz-smoke` (3s each, part of `make test`) in CI. -run '^$' runs no
# test beside the target (the webhook suite then starts no API server).
# A failing input is written to the package's testdata/fuzz/<target>/:
# commit it with the fix, as the regression seed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

fuzztime=${FUZZTIME:-60s}
# Every input that finds new coverage is minimized before it is reported:
# by default for up to 60s each, which stalls the slower targets (the
# webhook, the SDK's Source) for most of a run. Bound it in executions.
minimize=${FUZZMINIMIZETIME:-100x}
read -r -a extra <<<"${FUZZ_FLAGS:-}"

failed=()
start=$SECONDS
while IFS= read -r file; do
	dir=./$(dirname "$file")
	for target in $(grep -oE '^func Fuzz[A-Za-z0-9_]*' "$file" | sed 's/^func //'); do
		echo "== $dir $target ($fuzztime)"
		if ! go test "$dir" -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "${extra[@]}"; then
			failed+=("$dir $target")
		fi
	done
done < <(git ls-files --cached --others --exclude-standard -- '*_test.go' | xargs grep -l '^func Fuzz' | sort)

echo "fuzzing took $((SECONDS - start))s"
if ((${#failed[@]})); then
	printf 'fuzz target failed: %s\n' "${failed[@]}"
	exit 1
fi
