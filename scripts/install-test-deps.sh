#!/usr/bin/env bash
# Installs what the real-Slurm tests need (Debian 12): slurm-wlm 22.05 + slurmdbd, munge, MariaDB
# (for slurmdbd, so sacct/sacctmgr behave as on a production site), OpenSSH; and the POSIX test
# users alice and bob. Idempotent and fast when everything is already there. Run as root.
# Nothing is left running: package scripts are kept from starting services (no systemd here), the
# test fixtures start their own daemons (bbp_notebooks.devtools.realslurm).
# --build-only: just what pip needs to build our Python dependencies (gssapi compiles against
# libkrb5-dev), for `make python-deps` on a fresh machine; no users, no Spark virtualenv.
set -euo pipefail

PACKAGES=(
  slurm-wlm slurm-client slurmdbd munge
  mariadb-server mariadb-client
  openssh-server openssh-client
  prometheus  # a real Prometheus and promtool for the metrics, alert and dashboard tests
  krb5-kdc krb5-admin-server krb5-user libkrb5-dev
  openjdk-17-jre-headless python3-venv  # PySpark profiles: Spark's JVM, the jobs' virtualenv
  buildah debootstrap  # the images, built here from a local Debian base (scripts/build-images.sh)
  containerd runc containernetworking-plugins iptables  # the real node (devtools/node.py)
)
TEST_USERS=(alice bob slurmop)  # slurmop: AdminLevel=Operator at the real Slurm test site
BUILD_ONLY=0
if [[ ${1:-} == --build-only ]]; then
  PACKAGES=(libkrb5-dev gcc)
  BUILD_ONLY=1
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done

if [[ $(id -u) -ne 0 ]] && { ((!BUILD_ONLY)) || ((${#missing[@]})); }; then
  echo "install-test-deps.sh: must run as root${missing[*]:+ to install ${missing[*]}}" >&2
  exit 1
fi

if ((${#missing[@]})); then
  echo "install-test-deps.sh: installing ${missing[*]}"
  # Keep maintainer scripts from starting daemons (invoke-rc.d honours policy-rc.d exit 101).
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 0755 /usr/sbin/policy-rc.d
    created_policy=1
  fi
  trap 'if [[ $created_policy == 1 ]]; then rm -f /usr/sbin/policy-rc.d; fi' EXIT
  export DEBIAN_FRONTEND=noninteractive
  for attempt in 1 2 3; do  # a mirror hiccup should not fail the whole test run
    if apt-get update -qq &&
      apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
      break
    fi
    if ((attempt == 3)); then
      echo "install-test-deps.sh: apt-get failed 3 times" >&2
      exit 1
    fi
    sleep $((attempt * 5))
  done
fi
if ((BUILD_ONLY)); then
  exit 0
fi

for user in "${TEST_USERS[@]}"; do
  if ! id -u "$user" >/dev/null 2>&1; then
    useradd --create-home --shell /bin/bash "$user"
  fi
  home=$(getent passwd "$user" | cut -d: -f6)
  if [[ ! -d $home ]]; then
    mkdir -p "$home"
    chown "$user:$user" "$home"
  fi
  # useradd leaves the password field "!" (locked); sshd with UsePAM no refuses locked accounts
  # even for certificate logins. "*" = no password, not locked.
  if [[ $(getent shadow "$user" | cut -d: -f2) == '!'* ]]; then
    usermod -p '*' "$user"
  fi
done

# sshd's privilege-separation directory (normally made by the systemd unit).
mkdir -p /run/sshd
chmod 0755 /run/sshd

# PySpark profiles (tests/operator/test_real_slurm_spark.py): a virtualenv built with the system
# python3 that jobs run, readable by the test users, with PyPI's pyspark (its wheel carries
# Spark 3.5, which runs on OpenJDK 17) and numpy. Pinned; rebuilt only when the pins change.
SPARK_VENV=/opt/bbp-notebooks/spark-venv
SPARK_PINS="pyspark==3.5.3 numpy==2.2.6"
if [[ $(cat "$SPARK_VENV/.pins" 2>/dev/null) != "$SPARK_PINS" ]]; then
  echo "install-test-deps.sh: building $SPARK_VENV ($SPARK_PINS)"
  rm -rf "$SPARK_VENV"
  mkdir -p "$(dirname "$SPARK_VENV")"
  /usr/bin/python3 -m venv "$SPARK_VENV"
  # shellcheck disable=SC2086  # the pins are words
  "$SPARK_VENV/bin/pip" install --quiet $SPARK_PINS
  echo "$SPARK_PINS" >"$SPARK_VENV/.pins"
  chmod -R a+rX "$SPARK_VENV"
fi
