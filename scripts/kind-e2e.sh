#!/usr/bin/env bash
# End-to-end check of the Helm chart and the images in a kind cluster (`make kind-e2e`).
#
#   scripts/kind-e2e.sh                 # create, build, load, install, check, tear down
#   KEEP_CLUSTER=1 scripts/kind-e2e.sh  # leave the cluster running for inspection
#   BUILD_IMAGES=0 scripts/kind-e2e.sh  # use bbp-notebooks/{operator,hub,mockslurm,proxy}:$IMAGE_TAG
#                                       # already in Docker (docker load), build nothing
#   KIND_NODE_IMAGE=ref                 # another node image (kind's --image)
#   KIND_CONFIG=file                    # another kind config (default kind-config.yaml)
#   KIND_LOGS_DIR=dir                   # on failure, `kind export logs` there before deleting
#
# Needs a running Docker, kind (>= 0.30), ssh, ssh-keygen and curl; helm and kubectl are taken from
# PATH or built by scripts/build-tools.sh. Every wait has a deadline; any failure stops the run,
# prints what the cluster knows, and tears the cluster down.
#
# Images it needs (an air-gapped host: bring them with `docker save` / `docker load`):
# - the node image pinned in kind-config.yaml, kindest/node:v1.34.0@sha256:7416a61b... (kind v0.30.0's
#   image for Kubernetes v1.34.0; it carries the control plane, CoreDNS, pause, kindnetd and the
#   local-path provisioner, so nothing else is pulled by the cluster). kind pulls it unless Docker
#   has it already; a mirror's copy can be named with KIND_NODE_IMAGE.
# - the chart's four images, bbp-notebooks/{operator,hub,mockslurm,proxy}:$IMAGE_TAG, built here
#   from docker/*.Dockerfile (their base, PYTHON_IMAGE, python:3.11-slim-bookworm pinned by digest,
#   is pulled by the build unless present; `--build-arg PYTHON_IMAGE=...` via BUILD_ARGS), or
#   loaded beforehand with BUILD_IMAGES=0; either way they reach the node by `kind load
#   docker-image`, and the chart runs them with pullPolicy Never.
# scripts/kind-here.sh runs this script on a machine without any registry.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cluster=${KIND_CLUSTER_NAME:-bbp-notebooks-e2e}
release=bbp
namespace=bbp-notebooks
sessions=$namespace-sessions
tag=${IMAGE_TAG:-e2e}
keep=${KEEP_CLUSTER:-0}
build_images=${BUILD_IMAGES:-1}
kind_config=${KIND_CONFIG:-$root/kind-config.yaml}
images=(operator hub mockslurm proxy)

log() { printf '[kind-e2e] %(%H:%M:%S)T %s\n' -1 "$*" >&2; }
die() { printf '[kind-e2e] FAILED: %s\n' "$*" >&2; exit 1; }

# -- preflight: fail clearly, before touching anything ---------------------------------------
command -v docker >/dev/null 2>&1 || die "docker is not installed: kind-e2e needs a host with Docker"
docker info >/dev/null 2>&1 \
  || die "the Docker daemon is not reachable ('docker info' failed): kind-e2e needs a running Docker"
command -v kind >/dev/null 2>&1 \
  || die "kind is not installed (e.g. 'go install sigs.k8s.io/kind@v0.30.0')"
kind_version=$(kind version 2>&1 || true)
[[ "$kind_version" =~ ^kind\ v([0-9]+)\.([0-9]+)\. ]] \
  && ((BASH_REMATCH[1] > 0 || BASH_REMATCH[2] >= 30)) \
  || die "kind >= 0.30 is needed (kind version: '${kind_version%%$'\n'*}')"
for tool in ssh ssh-keygen curl; do
  command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed"
done
[[ -r "$kind_config" ]] || die "no kind config at $kind_config"
if [[ "$build_images" == 0 ]]; then
  for image in "${images[@]}"; do
    docker image inspect "bbp-notebooks/$image:$tag" >/dev/null 2>&1 \
      || die "BUILD_IMAGES=0 but Docker has no bbp-notebooks/$image:$tag (docker load it first)"
  done
fi
if ! command -v helm >/dev/null 2>&1 || ! command -v kubectl >/dev/null 2>&1; then
  log "helm/kubectl not on PATH: building the pinned ones (scripts/build-tools.sh)"
  tools_bin=$(bash "$here/build-tools.sh" | tail -n 1)
  PATH="$tools_bin:$PATH"
fi

work=$(mktemp -d)
export KUBECONFIG="$work/kubeconfig"
port_forward_pid=""

diagnose() {
  log "cluster state at failure:"
  kubectl get pods,statefulsets,deployments -n "$namespace" -o wide >&2 || true
  kubectl get slurmsites,notebooksessions -A >&2 || true
  kubectl logs -n "$namespace" "statefulset/$release-bbp-notebooks-operator" --tail=80 >&2 || true
  kubectl logs -n "$namespace" "deployment/$release-bbp-notebooks-mockslurm" --tail=40 >&2 || true
  if [[ -n "${KIND_LOGS_DIR:-}" ]]; then
    kind export logs --name "$cluster" "$KIND_LOGS_DIR" >&2 || true
  fi
}

cleanup() {
  local status=$?
  if [[ -n "$port_forward_pid" ]]; then kill "$port_forward_pid" 2>/dev/null || true; fi
  ((status == 0)) || diagnose
  if [[ "$keep" == 1 ]]; then
    log "keeping cluster $cluster (KUBECONFIG=$KUBECONFIG); delete with: kind delete cluster --name $cluster"
  else
    kind delete cluster --name "$cluster" >/dev/null 2>&1 || true
    rm -rf "$work"
  fi
  if ((status == 0)); then log "PASSED"; else log "FAILED (exit $status)"; fi
}
trap cleanup EXIT

# -- cluster and images ----------------------------------------------------------------------
log "creating kind cluster $cluster"
create=(--name "$cluster" --config "$kind_config" --kubeconfig "$KUBECONFIG" --wait 180s)
[[ -n "${KIND_NODE_IMAGE:-}" ]] && create+=(--image "$KIND_NODE_IMAGE")
[[ "${KIND_RETAIN:-0}" == 1 ]] && create+=(--retain)
kind create cluster "${create[@]}"

# BuildKit (no `# syntax=` line in the Dockerfiles, so no frontend image is fetched); the host's CA
# bundle as the builds' secret "ca-bundle" for a proxy that intercepts TLS (docker/*.Dockerfile).
ca_bundle=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
build=()
[[ -r "$ca_bundle" ]] && build+=(--secret "id=ca-bundle,src=$ca_bundle")
read -r -a extra <<<"${BUILD_ARGS:-}"
for image in "${images[@]}"; do
  if [[ "$build_images" != 0 ]]; then
    log "building bbp-notebooks/$image:$tag"
    DOCKER_BUILDKIT=1 docker build "${build[@]}" "${extra[@]}" \
      --file "$root/docker/$image.Dockerfile" --tag "bbp-notebooks/$image:$tag" "$root"
  fi
  kind load docker-image --name "$cluster" "bbp-notebooks/$image:$tag"
done

# -- keys: a host CA for the mock frontends, a user CA for the operator's certificates --------
ssh-keygen -q -t ed25519 -N '' -C e2e-host-ca -f "$work/host_ca"
ssh-keygen -q -t ed25519 -N '' -C e2e-user-ca -f "$work/user_ca"

# Sites as in the chart's defaults; the chart points their notebooks at the mock's pod (<mock>-nodes).
cat >"$work/values.yaml" <<YAML
operator:
  image: {tag: $tag, pullPolicy: Never}
  settings:
    # The mock's pod has no Jupyter: a stdlib web server stands in for the notebook.
    notebookCommand: ["python3", "-m", "http.server", "--bind", "{host}", "{port}"]
hub:
  image: {tag: $tag, pullPolicy: Never}
proxy:
  image: {tag: $tag, pullPolicy: Never}
  service: {type: NodePort, nodePort: 30080}
mockSlurm:
  enabled: true
  image: {tag: $tag, pullPolicy: Never}
userCa: {create: true}
slurmSites:
  - name: geneva
    spec:
      displayName: Geneva
      frontend: {host: replaced-by-the-mock}
      hostKeys: {knownHosts: ["replaced-by-the-mock"]}
      partitions: [{name: prod, default: true}, {name: debug}]
      auth: {method: Certificate, caSecretName: bbp-user-ca}
      monitorUser: bbpmon
      pollIntervalSeconds: 5
  - name: lugano
    spec:
      displayName: Lugano
      frontend: {host: replaced-by-the-mock}
      hostKeys: {knownHosts: ["replaced-by-the-mock"]}
      partitions: [{name: prod, default: true}]
      accountPolicy: Required
      auth: {method: Certificate, caSecretName: bbp-user-ca}
      monitorUser: bbpmon
      pollIntervalSeconds: 5
YAML

# -- install ---------------------------------------------------------------------------------
log "helm install $release (operator, hub, proxy, mock Slurm)"
helm install "$release" "$root/charts/bbp-notebooks" --namespace "$namespace" --create-namespace \
  --values "$work/values.yaml" \
  --set-file "mockSlurm.hostCaPrivateKey=$work/host_ca" \
  --set-file "mockSlurm.hostCaPublicKey=$work/host_ca.pub" \
  --set-file "mockSlurm.userCaPublicKey=$work/user_ca.pub" \
  --set-file "userCa.privateKey=$work/user_ca" \
  --wait --timeout 5m

log "waiting for both sites to be reachable"
for site in geneva lugano; do
  kubectl wait "slurmsite/$site" --timeout=120s \
    --for=jsonpath='{.status.conditions[?(@.type=="Reachable")].status}'=True
done
kubectl get slurmsites

log "the hub answers through the proxy"
for _ in $(seq 60); do
  curl -fsS -o /dev/null http://127.0.0.1:18080/hub/health && break
  sleep 2
done
curl -fsS -o /dev/null http://127.0.0.1:18080/hub/health || die "the hub is not reachable through the proxy"

# -- a session from creation to deletion -----------------------------------------------------
log "creating a session and waiting until it is Ready"
# The chart's admission policy wants the creator named: the user of this kubeconfig (kind's admin).
requester=$(kubectl auth whoami -o jsonpath='{.status.userInfo.username}')
[[ -n "$requester" ]] || die "kubectl auth whoami named no user"
kubectl apply -f - <<YAML
apiVersion: notebooks.bbp.epfl.ch/v1alpha1
kind: NotebookSession
metadata:
  name: e2e-alice
  namespace: $sessions
  annotations: {notebooks.bbp.epfl.ch/created-by: "$requester"}
spec: {user: alice, profile: bluepy, site: geneva}
YAML
kubectl wait -n "$sessions" notebooksession/e2e-alice --for=jsonpath='{.status.phase}'=Ready \
  --timeout=180s
kubectl get notebooksessions -A
job_id=$(kubectl get -n "$sessions" notebooksession/e2e-alice -o jsonpath='{.status.jobId}')
[[ "$job_id" =~ ^[0-9]+$ ]] || die "no job id in the session's status: '$job_id'"

# Ask the mock Geneva frontend directly, over ssh as the monitor user with a certificate from the
# same user CA, and with its host certificate checked against the host CA under the Service's name
# (the name the operator uses; the certificate does not name the port-forward's 127.0.0.1).
ssh-keygen -q -t ed25519 -N '' -f "$work/bbpmon"
ssh-keygen -q -s "$work/user_ca" -I e2e-check -n bbpmon -V -10m:+30m "$work/bbpmon.pub"
mock_host="$release-bbp-notebooks-mockslurm.$namespace.svc"
printf '@cert-authority %s %s\n' "$mock_host" "$(cat "$work/host_ca.pub")" >"$work/known_hosts"
kubectl port-forward -n "$namespace" "svc/$release-bbp-notebooks-mockslurm" 12222:2222 \
  --address 127.0.0.1 >/dev/null 2>&1 &
port_forward_pid=$!
slurm() {
  ssh -p 12222 -i "$work/bbpmon" -o CertificateFile="$work/bbpmon-cert.pub" \
    -o UserKnownHostsFile="$work/known_hosts" -o HostKeyAlias="$mock_host" \
    -o StrictHostKeyChecking=yes -o BatchMode=yes \
    -o ConnectTimeout=10 bbpmon@127.0.0.1 "$@"
}
for _ in $(seq 30); do slurm true 2>/dev/null && break; sleep 1; done
state=$(slurm squeue -h -j "$job_id" -o %T) || die "cannot ask the mock Geneva frontend over ssh"
[[ "$state" == RUNNING ]] || die "job $job_id is '$state' in squeue, expected RUNNING"
log "job $job_id is RUNNING at Geneva"

log "deleting the session: its finalizer must cancel the job"
kubectl delete -n "$sessions" notebooksession/e2e-alice --timeout=120s
state=$(slurm sacct -a -n -X -P -j "$job_id" -o State) || die "sacct over ssh failed"
[[ "$state" == CANCELLED* ]] || die "job $job_id ended as '$state', expected CANCELLED"
[[ -z "$(slurm squeue -h -j "$job_id" -t PENDING,RUNNING -o %i)" ]] \
  || die "job $job_id still queued or running after its session was deleted"
log "job $job_id is gone (sacct: $state)"

# -- high availability: two replicas, distinct peering priorities ----------------------------
log "upgrading to two operator replicas (kopf peering)"
helm upgrade "$release" "$root/charts/bbp-notebooks" --namespace "$namespace" --reuse-values \
  --set operator.replicas=2 --wait --timeout 5m
# The chart's operator serves only the session namespace: its peering is the KopfPeering there.
for _ in $(seq 60); do
  priorities=$(kubectl get kopfpeering -n "$sessions" bbp-notebooks \
    -o go-template='{{range .status}}{{.priority}} {{end}}' 2>"$work/peering.err" || true)
  [[ $(wc -w <<<"$priorities") -eq 2 ]] && break
  sleep 2
done
read -r -a seen <<<"$priorities"
if ((${#seen[@]} != 2)); then
  cat "$work/peering.err" >&2
  kubectl get kopfpeering,clusterkopfpeering -A -o yaml >&2 || true
  kubectl logs -n "$namespace" "$release-bbp-notebooks-operator-0" --tail=40 >&2 || true
  die "expected two peers in the KopfPeering of $sessions, saw: '$priorities'"
fi
[[ "${seen[0]}" != "${seen[1]}" ]] || die "both replicas have priority ${seen[0]}"
log "two peers with priorities ${seen[*]}"

# -- uninstall: no finalizer may hold it up (the pre-delete hook lets the sites go first) -------
log "helm uninstall $release"
start=$SECONDS
helm uninstall "$release" --namespace "$namespace" --wait --timeout 2m
left=$(kubectl get slurmsites -l "app.kubernetes.io/instance=$release" -o name 2>/dev/null || true)
[[ -z "$left" ]] || die "SlurmSites left after uninstall: $left"
kubectl get namespace "$sessions" >/dev/null || die "the sessions namespace went with the release"
log "uninstalled in $((SECONDS - start)) s"
