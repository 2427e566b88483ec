# kube-proxy for the kind node of scripts/kind-here.sh: our pinned build (scripts/build-tools.sh
# --node) with Debian's iptables, which it runs. kubeadm's DaemonSet names it
# registry.k8s.io/kube-proxy:<version>; the node imports it at boot, nothing is pulled.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then \
      echo 'Acquire::https::CAInfo "/run/secrets/ca-bundle";' >/etc/apt/apt.conf.d/99ca; fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends iptables conntrack \
 && rm -rf /var/lib/apt/lists/* /etc/apt/apt.conf.d/99ca
COPY kube-proxy /usr/local/bin/kube-proxy
