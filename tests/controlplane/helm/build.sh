#!/usr/bin/env bash
# Builds helm from its Go module (pinned in go.mod beside this script) and prints the path
# of the binary. Cached outside the repository, keyed by the pinned version and by these
# files, so only the first run compiles anything.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
helm=$(awk '$1 == "require" && $2 == "helm.sh/helm/v4" {print $3; exit}' "$here/go.mod")
key="helm-$helm-$(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -c1-12)"
out="${PLUGINGUARD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/pluginguard}/helm/$key"

if [[ -x $out/helm ]]; then
  echo "$out/helm"
  exit 0
fi
command -v go >/dev/null || { echo "helm/build.sh: the Go toolchain is needed to build helm" >&2; exit 1; }
mkdir -p "$(dirname "$out")"
# Test runs and `make test` may call this at once: one builds, the others wait for it.
if command -v flock >/dev/null; then
  exec 9>"$out.lock"
  flock 9
  if [[ -x $out/helm ]]; then
    echo "$out/helm"
    exit 0
  fi
fi
rm -rf "$out.tmp" && mkdir -p "$out.tmp"
echo "building helm $helm into $out (first time only; takes a few minutes)" >&2
cd "$here"
# Without the stamp `helm version` says v4.3, which hides the patch release.
CGO_ENABLED=0 go build -trimpath \
  -ldflags="-s -w -X helm.sh/helm/v4/internal/version.version=$helm -X helm.sh/helm/v4/internal/version.gitTreeState=clean" \
  -o "$out.tmp/" helm.sh/helm/v4/cmd/helm >&2
rm -rf "$out" && mv "$out.tmp" "$out"
echo "$out/helm"
