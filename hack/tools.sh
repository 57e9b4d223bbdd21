#!/usr/bin/env bash
# Builds the project's pinned tools into bin/ from the Go module proxy.
#
# Nothing is downloaded as a prebuilt binary: kube-apiserver,
# kube-controller-manager (garbage collection, namespace deletion and service
# account tokens for the local control plane), kube-scheduler, kubectl and the
# kubelet come
# from k8s.io/kubernetes (hack/tools/kubernetes), etcd from
# go.etcd.io/etcd/server/v3 (hack/tools/etcd), and containerd, ctr and
# containerd-shim-runc-v2 (the node's container runtime, pure Go: no btrfs,
# devmapper or zfs snapshotters), helm, controller-gen and golangci-lint from
# `go install <pkg>@<version>`. runc and the CNI loopback plugin come from
# Debian's runc and containernetworking-plugins packages (.ci/run installs
# them). Each binary is written once
# to bin/tools/<name>-<version> and linked as bin/<name>, so a second run only
# checks that the versioned files exist and takes well under a second.
#
# usage: hack/tools.sh [name...]   (default: every tool)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin="$root/bin"
mkdir -p "$bin/tools"

# Versions of the tools that are not pinned by a go.mod in hack/tools.
HELM_VERSION=${HELM_VERSION:-v4.3.1}
CONTROLLER_GEN_VERSION=${CONTROLLER_GEN_VERSION:-v0.23.0}
GOLANGCI_LINT_VERSION=${GOLANGCI_LINT_VERSION:-v2.15.0}
CONTAINERD_VERSION=${CONTAINERD_VERSION:-v2.4.2}

# modversion FILE MODULE prints the version of MODULE required by FILE.
modversion() {
	awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit } $1 == "require" && $2 == m { print $3; exit }' "$1"
}

kube_version=$(modversion "$root/hack/tools/kubernetes/go.mod" k8s.io/kubernetes)
etcd_version=$(modversion "$root/hack/tools/etcd/go.mod" go.etcd.io/etcd/server/v3)
api_version=$(modversion "$root/go.mod" k8s.io/api)
if [[ "${kube_version#v1.}" != "${api_version#v0.}" ]]; then
	echo "hack/tools.sh: hack/tools/kubernetes pins k8s.io/kubernetes $kube_version but go.mod requires k8s.io/api $api_version;" >&2
	echo "  run 'make tools-update' so the control plane matches the client libraries" >&2
	exit 1
fi

# install NAME VERSION BUILD-COMMAND... runs BUILD-COMMAND with $out set to a
# temporary path when bin/tools/NAME-VERSION is missing, then links bin/NAME.
install() {
	local name=$1 version=$2
	shift 2
	local dest="$bin/tools/$name-$version"
	if [[ ! -x "$dest" ]]; then
		echo "building $name $version (from the Go module proxy; the first build takes minutes)" >&2
		local start=$SECONDS
		out="$dest.tmp.$$"
		"$@"
		mv -f "$out" "$dest"
		echo "built $name $version in $((SECONDS - start))s" >&2
	fi
	ln -sfn "tools/$name-$version" "$bin/$name"
}

k8s_ldflags() {
	local v=$kube_version minor
	minor=${v#v1.}
	minor=${minor%%.*}
	echo "-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
}

build_kube() { (cd "$root/hack/tools/kubernetes" && go build -trimpath -ldflags "$(k8s_ldflags)" -o "$out" "$1"); }
build_etcd() { (cd "$root/hack/tools/etcd" && go build -trimpath -ldflags "-s -w" -o "$out" go.etcd.io/etcd/server/v3); }
build_go_install() {
	local pkg=$1 version=$2 ldflags=${3:-} tags=${4:-}
	local gobin
	gobin=$(mktemp -d)
	GOBIN="$gobin" go install -trimpath -tags "$tags" -ldflags "-s -w $ldflags" "$pkg@$version"
	mv -f "$gobin/$(basename "$pkg")" "$out"
	rm -rf "$gobin"
}

one() {
	case $1 in
	kube-apiserver) install kube-apiserver "$kube_version" build_kube k8s.io/kubernetes/cmd/kube-apiserver ;;
	kubectl) install kubectl "$kube_version" build_kube k8s.io/kubernetes/cmd/kubectl ;;
	kube-controller-manager) install kube-controller-manager "$kube_version" build_kube k8s.io/kubernetes/cmd/kube-controller-manager ;;
	kube-scheduler) install kube-scheduler "$kube_version" build_kube k8s.io/kubernetes/cmd/kube-scheduler ;;
	kubelet) install kubelet "$kube_version" build_kube k8s.io/kubernetes/cmd/kubelet ;;
	containerd | ctr | containerd-shim-runc-v2)
		install "$1" "$CONTAINERD_VERSION" build_go_install "github.com/containerd/containerd/v2/cmd/$1" "$CONTAINERD_VERSION" \
			"-X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" "no_btrfs no_devmapper no_zfs"
		;;
	etcd) install etcd "$etcd_version" build_etcd ;;
	helm) install helm "$HELM_VERSION" build_go_install helm.sh/helm/v4/cmd/helm "$HELM_VERSION" \
		"-X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" ;;
	controller-gen) install controller-gen "$CONTROLLER_GEN_VERSION" build_go_install \
		sigs.k8s.io/controller-tools/cmd/controller-gen "$CONTROLLER_GEN_VERSION" ;;
	golangci-lint) install golangci-lint "$GOLANGCI_LINT_VERSION" build_go_install \
		github.com/golangci/golangci-lint/v2/cmd/golangci-lint "$GOLANGCI_LINT_VERSION" \
		"-X main.version=${GOLANGCI_LINT_VERSION#v}" ;;
	*)
		echo "hack/tools.sh: unknown tool $1" >&2
		exit 2
		;;
	esac
}

if [[ $# -eq 0 ]]; then
	set -- controller-gen etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet \
		containerd ctr containerd-shim-runc-v2 helm golangci-lint
fi
for t in "$@"; do one "$t"; done
