# A kind node image built on this machine (scripts/kind-here.sh), for hosts where kindest/node
# cannot be pulled. Not the normal path: `make kind-e2e` on an ordinary Docker host uses the pinned
# kindest/node of kind-config.yaml. What kind v0.30 expects of a node image, all of it ours:
# systemd as PID 1 (kind waits for "Reached target ... Multi-User System"), containerd on
# /run/containerd/containerd.sock with the systemd cgroup driver (kind's kubeadm config), `kubeadm`,
# `kubelet` and `kubectl` on PATH, /kind/version, and /kind/manifests/default-storage.yaml; the
# control-plane images, CoreDNS and the sandbox image are imported from /kind/images at boot, before
# the kubelet starts, so nothing is ever pulled. Build context: a directory prepared by
# scripts/kind-here.sh (these files, plus bin/ with the pinned Kubernetes binaries and images/).
#
# BASE: a Debian 12 image (here the debootstrap'ed base of scripts/build-images.sh BASE=local).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# The secret "ca-bundle" (optional) lets apt trust a proxy that intercepts TLS; it is in no layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then \
      echo 'Acquire::https::CAInfo "/run/secrets/ca-bundle";' >/etc/apt/apt.conf.d/99ca; fi \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
      systemd systemd-sysv dbus containerd runc containernetworking-plugins iptables iproute2 \
      conntrack ethtool socat kmod mount util-linux procps ca-certificates \
 && rm -rf /var/lib/apt/lists/* /etc/apt/apt.conf.d/99ca /etc/machine-id

# Units that have no business in a container (several would change the host through the privileged
# container's /proc/sys, /sys and /dev: sysctl, binfmt, udev, module loading).
RUN systemctl mask systemd-sysctl.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
      systemd-udevd.service systemd-udev-trigger.service systemd-udev-settle.service \
      systemd-modules-load.service systemd-remount-fs.service kmod-static-nodes.service \
      sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
      getty.target console-getty.service systemd-firstboot.service \
 && systemctl set-default multi-user.target

COPY files/ /
COPY bin/ /usr/bin/
COPY images/ /kind/images/
RUN chmod 0755 /usr/local/bin/entrypoint /usr/bin/kubeadm /usr/bin/kubelet /usr/bin/kubectl \
 && systemctl enable containerd.service kind-images.service

ENV container=docker
STOPSIGNAL SIGRTMIN+3
ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]
