#!/usr/bin/env bash
# Builds kube-apiserver, etcd and kubectl from their Go modules (pinned in go.mod) and
# prints the folder that holds them. The binaries are cached outside the repository, keyed
# by the pinned versions and by this script (its flags shape the output), so only the
# first run compiles anything.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
k8s=$(awk '$1 == "k8s.io/kubernetes" {print $2; exit}' "$here/go.mod")
etcd=$(awk '$1 == "go.etcd.io/etcd/server/v3" {print $2; exit}' "$here/go.mod")
key="k8s-$k8s-etcd-$etcd-$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)"
out="${PLUGINGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pluginguard}/controlplane/$key"

built() { [[ -x $out/kube-apiserver && -x $out/etcd && -x $out/kubectl ]]; }
if built; then
  echo "$out"
  exit 0
fi
command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the control plane" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# Test runs and `make demo` may call this at once: one builds, the others wait for it.
if command -v flock >/dev/null; then
  exec 9>"$out.lock"
  flock 9
  if built; then
    echo "$out"
    exit 0
  fi
fi
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
echo "building kube-apiserver $k8s, etcd $etcd and kubectl into $out (first time only; takes minutes)" >&2
cd "$here"
# `go build` leaves the version at v0.0.0-master, which /version and kubectl would
# report; stamp the pinned one as the Kubernetes release build does.
major=${k8s#v}; major=${major%%.*}
minor=${k8s#v*.}; minor=${minor%%.*}
stamp=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  stamp+=" -X $pkg.gitVersion=$k8s -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
CGO_ENABLED=0 go build -trimpath -ldflags="-s -w$stamp" -o "$out.tmp/" \
  ./etcd k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kubectl >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out"
