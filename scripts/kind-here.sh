#!/usr/bin/env bash
# `make kind-e2e` on THIS machine (no registry, root without CAP_SYS_RESOURCE, a shared host
# network): the machine-specific workarounds around the unchanged scripts/kind-e2e.sh. Not part of
# `make test`, not the path for a host with Docker (that is plain `make kind-e2e`).
#
#   scripts/kind-here.sh            # build (cached), then, holding /tmp/node-net.lock: protect the
#                                   # network, start a private dockerd, run kind-e2e, undo it all
#   KEEP_IMAGES=1 scripts/kind-here.sh   # keep dockerd's data dir (images) for the next run
#
# What it works around, and how:
# - No registry: every image is built here with buildah (daemonless, before any network change):
#   the chart's four (scripts/build-images.sh BASE=local), a kind node image of our own
#   (docker/kind-here/node.Dockerfile: systemd, Debian's containerd/runc/CNI plugins, kubeadm,
#   kubelet and kubectl of the pinned k8s.io/kubernetes), and the images kubeadm runs, under the
#   names `kubeadm config images list` gives: kube-apiserver, -controller-manager, -scheduler and
#   etcd/CoreDNS (our pinned builds of scripts/tools.env, static, from scratch), kube-proxy (with
#   Debian's iptables, docker/kind-here/kube-proxy.Dockerfile) and our static pause. The node
#   imports them at boot; kind's own CNI image (kindnetd) is replaced by the bridge plugin
#   (disableDefaultCNI). They reach dockerd by `docker load`, the chart's then reach the node by
#   kind-e2e's `kind load docker-image` (BUILD_IMAGES=0): the air-gapped path of the README.
# - No CAP_SYS_RESOURCE: dockerd's default runtime is docker/kind-here/runc-without-sys-resource.
# - The network rule: dockerd is ours (socket, data and exec roots under $STATE), with no default
#   bridge, no iptables/ip6tables/ip-forward/masquerade, no IPv6, an address pool inside
#   10.88.0.0/16 and DNS 127.0.0.1 (nothing is resolved outside); the `kind` network is created
#   here as 10.88.128.0/24 (pods 10.88.0.0/17, Services 10.96.0.0/16, the API server and the
#   proxy's port on 127.0.0.1 through docker-proxy). Before dockerd starts: blackhole routes for
#   10.88.0.0/16, 10.96.0.0/16 and 10.89.0.1/32 and iptables DROP rules for 10.88.0.0/16 leaving by
#   the external interface(s), as devtools/node.py installs them (its constants and HostState are
#   used). At the end everything is stopped by PID and removed, the sysctls the kubelet changes
#   through the privileged node are put back, and the host is compared with HostState.
#
# Needs root, buildah, debootstrap (first run), Go and the Go module proxy, Debian's docker.io
# (installed here if missing, its service kept from starting), jq-free: python3.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
# shellcheck source=tools.env
source "$here/tools.env"
cache=${BBP_CACHE_DIR:-$HOME/.cache/bbp-notebooks}
state=${STATE:-/var/tmp/bbp-kind-here}
kind_version=v0.30.0
kind_bin="$cache/kind-$kind_version/bin"
node_image="localhost/bbp-notebooks/kind-node:$KUBERNETES_VERSION"
lock=/tmp/node-net.lock
export PYTHONPATH="$root/operator${PYTHONPATH:+:$PYTHONPATH}"

log() { printf '[kind-here] %s\n' "$*" >&2; }
die() { printf '[kind-here] FAILED: %s\n' "$*" >&2; exit 1; }
timed() { # timed NAME COMMAND...: run, log the seconds it took
  local name=$1 start=$SECONDS
  shift
  "$@"
  log "$name: $((SECONDS - start)) s"
}

# == phase 1: builds (no host network change, no lock) =====================================
build() {
  mkdir -p "$state"
  for tool in buildah go debootstrap; do command -v "$tool" >/dev/null || die "$tool is missing"; done
  if ! command -v dockerd >/dev/null; then
    # Debian's package; policy-rc.d (exit 101) keeps its service from starting an unprotected
    # dockerd with the default bridge.
    local rc=0
    /usr/sbin/policy-rc.d >/dev/null 2>&1 || rc=$?
    ((rc == 101)) || die "install docker.io yourself, with a policy-rc.d that denies starting services"
    timed "apt-get install docker.io" \
      env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io >&2
  fi
  if [[ ! -x "$kind_bin/kind" ]]; then
    timed "kind $kind_version from its Go module" \
      env GOBIN="$kind_bin" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod \
      nice -n 15 go install "sigs.k8s.io/kind@$kind_version"
  fi
  local tools
  tools=$(EXTRA_KUBERNETES_TOOLS=kubeadm nice -n 15 bash "$here/build-tools.sh" --node | tail -n 1)
  printf '%s\n' "$tools" >"$state/tools-bin"

  timed "chart images (scripts/build-images.sh BASE=local)" \
    env IMAGE_TAG=e2e BASE=local OUT="$state/chart-images" nice -n 15 bash "$here/build-images.sh"
  local base
  base=$(buildah images --format '{{.Name}}:{{.Tag}}' | grep -E '/bbp-notebooks/base:bookworm-' \
    | sort -u | head -n 1)
  [[ -n "$base" ]] || die "no local base image (scripts/build-images.sh BASE=local makes it)"

  # The node's build context: our files, the pinned binaries, the images kubeadm will run.
  local ctx="$state/node-context" images
  rm -rf "$ctx"
  mkdir -p "$ctx/bin" "$ctx/images"
  cp -r "$root/docker/kind-here/files" "$ctx/"
  printf '%s\n' "$KUBERNETES_VERSION" >"$ctx/files/kind/version"
  cp "$tools/kubeadm" "$tools/kubelet" "$tools/kubectl" "$ctx/bin/"
  images=$("$tools/kubeadm" config images list --kubernetes-version "$KUBERNETES_VERSION")
  local start=$SECONDS ref name
  for ref in $images; do
    name=${ref##*/}; name=${name%%:*}
    case "$name" in
      kube-proxy)
        cp "$tools/kube-proxy" "$ctx/kube-proxy"
        nice -n 15 buildah bud --isolation chroot --layers --quiet --build-arg "BASE=$base" \
          --secret "id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt" \
          --file "$root/docker/kind-here/kube-proxy.Dockerfile" --tag "$ref" "$ctx" >&2
        rm "$ctx/kube-proxy" ;;
      pause) scratch_image "$ref" "$tools/pause" /pause ;;
      coredns) scratch_image "$ref" "$tools/coredns" /coredns ;;
      *) scratch_image "$ref" "$tools/$name" "/usr/local/bin/$name" ;;
    esac
    buildah push --quiet "$ref" "docker-archive:$ctx/images/$name.tar:$ref" >&2
  done
  log "kubeadm's images (${images//$'\n'/ }): $((SECONDS - start)) s"
  timed "node image $node_image" nice -n 15 buildah bud --isolation chroot --layers --quiet \
    --build-arg "BASE=$base" --secret "id=ca-bundle,src=/etc/ssl/certs/ca-certificates.crt" \
    --file "$root/docker/kind-here/node.Dockerfile" --tag "$node_image" "$ctx" >&2
  rm -f "$state/node.tar"
  timed "node image archive" buildah push --quiet "$node_image" \
    "docker-archive:$state/node.tar:$node_image" >&2
}

# scratch_image REF BINARY PATH: a one-file image (our static builds), PATH set for kubeadm's
# static pods (they name the command, e.g. `kube-apiserver`); a leading-slash binary is the
# entrypoint as in the upstream images (CoreDNS, pause).
scratch_image() {
  local ctr
  ctr=$(buildah from scratch)
  buildah copy --quiet "$ctr" "$2" "$3" >/dev/null
  buildah config --env PATH=/usr/local/bin:/usr/bin:/bin "$ctr"
  [[ "$3" == /usr/local/bin/* ]] || buildah config --entrypoint "[\"$3\"]" "$ctr"
  buildah commit --quiet "$ctr" "$1" >/dev/null
  buildah rm "$ctr" >/dev/null
}

# == phase 2: the cluster (holding the host-network lock) ==================================
docker_sock="$state/run/docker.sock"
dockerd_pid=""
created_lib_modules=0

hoststate() { # hoststate capture|compare
  python3 - "$1" "$state/host-before.pickle" <<'PY'
import pickle, sys
from bbp_notebooks.devtools.node import HostState
mode, path = sys.argv[1], sys.argv[2]
if mode == "capture":
    with open(path, "wb") as f:
        pickle.dump(HostState.capture(), f)
else:
    with open(path, "rb") as f:
        before = pickle.load(f)
    diff = before.differences(HostState.capture())
    for name, (was, now) in diff.items():
        print(f"host {name} differs:\n--- before\n{was}\n--- after\n{now}", file=sys.stderr)
    sys.exit(1 if diff else 0)
PY
}

# sysctls capture|restore: the host's kernel/, vm/ and fs/ sysctls (not per network namespace, so
# a privileged container writes the host's), plus node.py's SYSCTLS; restore writes back each one
# that changed, except counters.
sysctls() {
  python3 - "$1" "$state/sysctls-before.json" <<'PY'
import json, os, sys
from bbp_notebooks.devtools.node import SYSCTLS
mode, path = sys.argv[1], sys.argv[2]
VOLATILE = ("fs/dentry-state", "fs/file-nr", "fs/inode-nr", "fs/inode-state", "fs/aio-nr",
            "fs/quota/", "kernel/random/", "kernel/ns_last_pid", "kernel/pty/nr", "kernel/tainted",
            "kernel/perf_event_max_sample_rate", "fs/binfmt_misc/", "vm/stat_refresh")
def read_all():
    values = {}
    names = [f"{top}/{rel}" for top in ("kernel", "vm", "fs")
             for rel in walk(f"/proc/sys/{top}")] + list(SYSCTLS)
    for name in names:
        if name.startswith(VOLATILE):
            continue
        try:
            with open(f"/proc/sys/{name}") as f:
                values[name] = f.read().strip()
        except OSError:
            pass
    return values
def walk(top):
    for dirpath, _, files in os.walk(top):
        for file in files:
            yield os.path.relpath(os.path.join(dirpath, file), top)
if mode == "capture":
    with open(path, "w") as f:
        json.dump(read_all(), f)
else:
    with open(path) as f:
        before = json.load(f)
    now = read_all()
    for name, value in before.items():
        if now.get(name, value) != value:
            try:
                with open(f"/proc/sys/{name}", "w") as f:
                    f.write(value + "\n")
                print(f"[kind-here] sysctl {name}: {now[name]!r} -> restored {value!r}", file=sys.stderr)
            except OSError as error:
                print(f"[kind-here] sysctl {name}: {now[name]!r}, cannot restore {value!r}: {error}",
                      file=sys.stderr)
PY
}

node_constant() {
  python3 -c "from bbp_notebooks.devtools import node; print(node.$1)"
}

protect_network() {
  local metric cidr dev
  metric=$(node_constant BLACKHOLE_METRIC)
  protected_cidrs=("$(node_constant POD_CIDR)" "$(node_constant SERVICE_CIDR)" "$(node_constant NODE_IP)/32")
  read -r -a external <<<"$(python3 -c 'from bbp_notebooks.devtools import node; print(*node.external_interfaces())')"
  ((${#external[@]})) || die "no external interface found"
  for cidr in "${protected_cidrs[@]}"; do
    ip route add blackhole "$cidr" metric "$metric"
    routes_added+=("$cidr")
  done
  for dev in "${external[@]}"; do
    for chain in FORWARD OUTPUT; do
      iptables -I "$chain" 1 -s "${protected_cidrs[0]}" -o "$dev" -j DROP
      rules_added+=("$chain $dev")
    done
  done
  log "blackholes ${protected_cidrs[*]} (metric $metric); DROP from ${protected_cidrs[0]} out ${external[*]}"
}

start_dockerd() {
  mkdir -p "$state/run" "$state/exec" "$state/docker"
  dockerd --host "unix://$docker_sock" --data-root "$state/docker" --exec-root "$state/exec" \
    --pidfile "$state/run/dockerd.pid" --bridge=none --iptables=false --ip6tables=false \
    --ip-forward=false --ip-masq=false --ipv6=false \
    --default-address-pool base=10.88.192.0/18,size=24 --dns 127.0.0.1 \
    --add-runtime "kind-here=$root/docker/kind-here/runc-without-sys-resource" \
    --default-runtime kind-here --default-cgroupns-mode private \
    >"$state/dockerd.log" 2>&1 &
  dockerd_pid=$!
  export DOCKER_HOST="unix://$docker_sock"
  local i
  for i in $(seq 60); do
    docker info >/dev/null 2>&1 && return 0
    kill -0 "$dockerd_pid" 2>/dev/null || break
    sleep 1
  done
  tail -n 20 "$state/dockerd.log" >&2
  die "dockerd did not answer within 60 s"
}

teardown() {
  local status=$? i
  set +e
  log "teardown"
  if [[ -n "$dockerd_pid" ]]; then
    timeout 120 "$kind_bin/kind" delete cluster --name "${KIND_CLUSTER_NAME:-bbp-notebooks-e2e}" >&2
    timeout 60 docker network rm kind >/dev/null 2>&1
    kill -TERM "$dockerd_pid" 2>/dev/null
    for i in $(seq 60); do kill -0 "$dockerd_pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$dockerd_pid" 2>/dev/null; then
      log "dockerd $dockerd_pid did not stop in 60 s: SIGKILL"
      kill -KILL "$dockerd_pid"
    fi
    wait "$dockerd_pid" 2>/dev/null
    # dockerd's own containerd (started by it, socket under our exec root) ends with it; wait.
    for i in $(seq 30); do
      pgrep -f "containerd --config $state/exec/" >/dev/null || break
      sleep 1
    done
  fi
  # Mounts dockerd may have left under our roots, deepest first.
  awk -v p="$state/" 'index($2, p) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount -l
  local cidr rule dev chain
  # What tried to leave: the DROP rules' counters (0 packets means nothing did).
  for chain in FORWARD OUTPUT; do
    iptables -L "$chain" -v -n -x 2>/dev/null | awk -v c="$chain" -v p="${protected_cidrs[0]:-none}" \
      '$3 == "DROP" && $8 == p {printf "[kind-here] DROP %s from %s out %s: %s packets\n", c, p, $7, $1}' >&2
  done
  for rule in "${rules_added[@]}"; do
    read -r chain dev <<<"$rule"
    iptables -D "$chain" -s "${protected_cidrs[0]}" -o "$dev" -j DROP
  done
  for cidr in "${routes_added[@]}"; do ip route del blackhole "$cidr" metric "$(node_constant BLACKHOLE_METRIC)"; done
  # What the kubelet (kernel.panic, vm.overcommit_memory, kernel.keys.*, ...) and anything else
  # in the privileged node wrote to the host's kernel/, vm/ and fs/ sysctls, put back and listed.
  sysctls restore
  # cgroups docker made (its `docker` parents), when they were not there before.
  while read -r dir; do
    grep -qxF "$dir" "$state/cgroups-before" || find "$dir" -depth -type d -exec rmdir {} + 2>/dev/null
  done < <(find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name docker)
  ((created_lib_modules)) && rmdir /lib/modules
  [[ "${KEEP_IMAGES:-0}" == 1 ]] || rm -rf "$state/docker" "$state/exec"
  if hoststate compare; then
    log "host state equals the state before (routes, addresses, links, iptables, sysctls, cgroups, mounts)"
  else
    log "HOST STATE DIFFERS from before (see above)"
    status=1
  fi
  log "exit $status; total $((SECONDS)) s"
  exit "$status"
}

cluster() {
  routes_added=() rules_added=() protected_cidrs=()
  hoststate capture
  sysctls capture
  find /sys/fs/cgroup -mindepth 2 -maxdepth 2 -type d -name docker >"$state/cgroups-before"
  trap teardown EXIT
  protect_network
  # kind mounts /lib/modules read-only into the node; docker would create a missing source.
  [[ -d /lib/modules ]] || { mkdir /lib/modules; created_lib_modules=1; }
  # Debian's docker CLI, the same release as its dockerd, first on PATH (kind calls `docker`).
  mkdir -p "$state/bin"
  ln -sf /usr/bin/docker "$state/bin/docker"
  export PATH="$state/bin:$PATH"
  timed "dockerd up" start_dockerd
  docker network create kind --driver bridge --subnet 10.88.128.0/24 --gateway 10.88.128.1 \
    -o com.docker.network.bridge.name=kindhere0 \
    -o com.docker.network.bridge.enable_ip_masquerade=false >/dev/null
  timed "docker load (node image)" docker load --quiet --input "$state/node.tar" >&2
  local image
  for image in "$state"/chart-images/*.tar; do docker load --quiet --input "$image" >&2; done
  docker images >&2

  cat >"$state/kind-config.yaml" <<YAML
kind: Cluster
apiVersion: kind.x-k8s.io/v1alpha4
networking:
  apiServerAddress: 127.0.0.1
  ipFamily: ipv4
  podSubnet: 10.88.0.0/17
  serviceSubnet: 10.96.0.0/16
  # kindnetd's image cannot be had here: the node's bridge CNI config covers the pod subnet.
  disableDefaultCNI: true
  kubeProxyMode: iptables
nodes:
  - role: control-plane
    image: $node_image
    extraPortMappings:
      - {containerPort: 30080, hostPort: 18080, listenAddress: 127.0.0.1, protocol: TCP}
YAML
  local tools
  tools=$(cat "$state/tools-bin")
  timed "make kind-e2e (scripts/kind-e2e.sh)" \
    env PATH="$kind_bin:$tools:$PATH" KIND_CONFIG="$state/kind-config.yaml" BUILD_IMAGES=0 \
    IMAGE_TAG=e2e KIND_LOGS_DIR="$state/kind-logs" KIND_RETAIN=1 \
    timeout "${KIND_E2E_TIMEOUT:-1500}" bash "$here/kind-e2e.sh"
}

case "${1:-all}" in
  build) timed "builds" build ;;
  cluster) cluster ;;
  all)
    timed "builds" build
    log "waiting for $lock (at most 20 min)"
    flock -w 1200 "$lock" bash "$0" cluster ;;
  *) die "usage: $0 [build|cluster|all]" ;;
esac
