#!/usr/bin/env bash
# Re-pins hack/tools/kubernetes to the Kubernetes release that matches the
# k8s.io/api version in go.mod (k8s.io/api v0.X.Y -> k8s.io/kubernetes v1.X.Y),
# replacing every staging module that k8s.io/kubernetes lists with its
# published v0.X.Y, and re-resolves the module graph through the proxy.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir="$root/hack/tools/kubernetes"
api=$(awk '$1 == "k8s.io/api" && $2 ~ /^v/ { print $2; exit }' "$root/go.mod")
staging=${api#v}
kube="v1.${staging#0.}"

mod=$(go mod download -json "k8s.io/kubernetes@$kube" | awk -F'"' '/"GoMod"/ { print $4 }')

{
	sed -n '1,/^module /p' "$dir/go.mod"
	echo
	echo "go 1.26.0"
	echo
	echo "replace ("
	awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$mod" | while read -r m; do
		# sample-* modules are examples that are not published and not built.
		case $m in k8s.io/sample-*) continue ;; esac
		printf '\t%s => %s v%s\n' "$m" "$m" "$staging"
	done
	echo ")"
} >"$dir/go.mod.new"
mv "$dir/go.mod.new" "$dir/go.mod"
rm -f "$dir/go.sum"
cd "$dir"
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$kube" "k8s.io/kubernetes/cmd/kube-controller-manager@$kube" \
	"k8s.io/kubernetes/cmd/kubectl@$kube" "k8s.io/kubernetes/cmd/kubelet@$kube" \
	"k8s.io/kubernetes/cmd/kube-scheduler@$kube"
go mod tidy
echo "hack/tools/kubernetes now pins k8s.io/kubernetes $kube"
