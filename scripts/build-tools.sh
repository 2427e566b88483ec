#!/usr/bin/env bash
# Build the pinned kube-apiserver, kubectl, etcd and helm from their Go modules into a cache outside
# the repo, and print the bin directory on the last line of stdout. Idempotent: a binary that is
# already built for the current pins is left alone.
#
#   scripts/build-tools.sh            # build what is missing, print "<tool> <version> <path>" lines
#   BBP_TOOLS_DIR=/some/dir scripts/build-tools.sh
#   scripts/build-tools.sh --node     # also the node: kubelet, kube-proxy, kube-controller-manager,
#                                     # kube-scheduler, CoreDNS and a static pause (tools/pause)
#   EXTRA_KUBERNETES_TOOLS=kubeadm scripts/build-tools.sh   # also other cmd/ tools of the same
#                                     # pinned module (scripts/kind-here.sh's node image needs kubeadm)
#
# Needs Go (>= 1.24) and the Go module proxy; nothing else from the network.
set -euo pipefail

node=0
[[ "${1:-}" == --node ]] && node=1

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools.env
source "$here/tools.env"

pin_tag="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}"
tools_dir=${BBP_TOOLS_DIR:-$HOME/.cache/bbp-notebooks/tools}
prefix="$tools_dir/$pin_tag"
bin="$prefix/bin"
mkdir -p "$bin"
# One build at a time per pin set (`make dev` and a test run may both ask).
exec 9>"$prefix/.lock"
flock 9

export GOFLAGS=-mod=mod
export CGO_ENABLED=0
export GOTOOLCHAIN=local

log() { printf '%s\n' "$*" >&2; }

# A binary counts as built when it exists next to a stamp naming the version it was built from.
is_built() { [[ -x "$bin/$1" && -f "$bin/.$1.version" && "$(cat "$bin/.$1.version")" == "$2" ]]; }

# new_build_dir NAME: a scratch main module in which `go get`/`go build` resolve one tool's graph.
new_build_dir() {
  local dir="$prefix/build/$1"
  rm -rf "$dir"
  mkdir -p "$dir"
  printf 'module bbp-notebooks.local/tools/%s\n\ngo 1.24\n' "$1" >"$dir/go.mod"
  printf '%s\n' "$dir"
}

finish() { # finish TOOL VERSION
  printf '%s\n' "$2" >"$bin/.$1.version"
}

KUBERNETES_TOOLS=(kube-apiserver kubectl)
NODE_TOOLS=(kubelet kube-proxy kube-controller-manager kube-scheduler)
# shellcheck disable=SC2206
EXTRA_TOOLS=(${EXTRA_KUBERNETES_TOOLS:-})

build_kubernetes() {
  local need=() tool
  local wanted=("${KUBERNETES_TOOLS[@]}")
  ((node)) && wanted+=("${NODE_TOOLS[@]}")
  wanted+=("${EXTRA_TOOLS[@]}")
  for tool in "${wanted[@]}"; do
    is_built "$tool" "$KUBERNETES_VERSION" || need+=("$tool")
  done
  ((${#need[@]})) || return 0
  log "building ${need[*]} $KUBERNETES_VERSION (slow the first time: ~thousands of packages)"
  local dir; dir=$(new_build_dir kubernetes)
  (
    cd "$dir"
    local kgomod
    kgomod=$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" | sed -n 's/^\s*"GoMod": "\(.*\)",$/\1/p')
    # k8s.io/kubernetes requires its staging modules as v0.0.0 and replaces them with ./staging/...;
    # replace directives of a dependency are ignored, so point each one at its published release.
    local staging
    staging=$(sed -n 's|^\s*\(k8s\.io/[a-z0-9-]*\) => \./staging/.*$|\1|p' "$kgomod" | sort -u)
    [[ -n "$staging" ]] || { log "no staging replaces found in $kgomod"; exit 1; }
    local args=()
    for m in $staging; do args+=("-replace=$m=$m@$KUBERNETES_STAGING_VERSION"); done
    # No `go mod tidy`: this module has no Go files, so tidy would drop the pinned requirement and
    # `go build` would then resolve k8s.io/kubernetes@latest. -mod=mod adds what the build needs.
    go mod edit "${args[@]}" -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
    local major minor
    major=${KUBERNETES_VERSION#v}; major=${major%%.*}
    minor=${KUBERNETES_VERSION#v*.}; minor=${minor%%.*}
    local x=""
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      x+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
      x+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    for tool in "${need[@]}"; do
      go build -trimpath -ldflags "-s -w$x" -o "$bin/$tool.tmp" "k8s.io/kubernetes/cmd/$tool"
      mv "$bin/$tool.tmp" "$bin/$tool"
      finish "$tool" "$KUBERNETES_VERSION"
    done
  )
}

build_etcd() {
  is_built etcd "$ETCD_VERSION" && return 0
  log "building etcd $ETCD_VERSION"
  local dir; dir=$(new_build_dir etcd)
  (
    cd "$dir"
    # The server module's root package is the etcd main (server/main.go in the etcd repo).
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$bin/etcd.tmp" go.etcd.io/etcd/server/v3
    mv "$bin/etcd.tmp" "$bin/etcd"
    finish etcd "$ETCD_VERSION"
  )
}

build_helm() {
  is_built helm "$HELM_VERSION" && return 0
  log "building helm $HELM_VERSION"
  local dir; dir=$(new_build_dir helm)
  (
    cd "$dir"
    go get "helm.sh/helm/v3@$HELM_VERSION"
    go build -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      -o "$bin/helm.tmp" helm.sh/helm/v3/cmd/helm
    mv "$bin/helm.tmp" "$bin/helm"
    finish helm "$HELM_VERSION"
  )
}

build_coredns() {
  is_built coredns "$COREDNS_VERSION" && return 0
  log "building coredns $COREDNS_VERSION"
  local dir; dir=$(new_build_dir coredns)
  (
    cd "$dir"
    go get "github.com/coredns/coredns@$COREDNS_VERSION"
    go build -trimpath -ldflags "-s -w" -o "$bin/coredns.tmp" github.com/coredns/coredns
    mv "$bin/coredns.tmp" "$bin/coredns"
    finish coredns "$COREDNS_VERSION"
  )
}

# The pod sandbox's process: ours (tools/pause), static, versioned by its source's hash.
build_pause() {
  local version
  version=$(sha256sum "$here/../tools/pause/main.go" | cut -c1-16)
  is_built pause "$version" && return 0
  log "building pause ($version)"
  local dir; dir=$(new_build_dir pause)
  cp "$here/../tools/pause/main.go" "$dir/"
  (cd "$dir" && go build -trimpath -ldflags "-s -w" -o "$bin/pause.tmp" .)
  mv "$bin/pause.tmp" "$bin/pause"
  finish pause "$version"
}

start=$SECONDS
build_etcd
build_helm
build_kubernetes
tools=("${KUBERNETES_TOOLS[@]}" "${EXTRA_TOOLS[@]}" etcd helm)
if ((node)); then
  build_coredns
  build_pause
  tools+=("${NODE_TOOLS[@]}" coredns pause)
fi
rm -rf "$prefix/build"
log "tools ready in $((SECONDS - start)) s"

for tool in "${tools[@]}"; do
  printf '%s %s %s\n' "$tool" "$(cat "$bin/.$tool.version")" "$bin/$tool"
done
printf '%s\n' "$bin"
