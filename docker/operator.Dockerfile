# The bbp-notebooks operator (kopf). Build from the repository root (no registry needed for the
# Dockerfile itself, no `# syntax=` line):
#   scripts/build-images.sh   (buildah)   or   DOCKER_BUILDKIT=1 docker build -f docker/operator.Dockerfile .
#
# Base: PYTHON_IMAGE, python:3.11-slim-bookworm pinned by tag and digest by default (the digest is
# from a public record of Docker Hub's manifest for that tag; bump both together). Any Debian 12
# image with `python` (3.11) and venv works: `BASE=local scripts/build-images.sh` builds one with
# debootstrap where no registry is reachable.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/docker/constraints.txt
WORKDIR /src
# python-gssapi (Kerberos) builds against MIT Kerberos; a base whose Python has no headers (Debian's
# python3, as in the locally built base) gets python3-dev.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
      $(python -c 'import os, sysconfig; print("" if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else "python3-dev")') \
 && rm -rf /var/lib/apt/lists/*
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml ./
# A virtualenv is the unit copied into the final image: no compiler, pip or sources follow it.
# Dependencies first (the "operator" extra, from pyproject.toml, pinned by the constraints), so a
# change of our code rebuilds only the last layer. The secret "ca-bundle" (scripts/build-images.sh
# passes the host's) lets pip trust a proxy that intercepts TLS; it is in no layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python -m venv /opt/bbp \
 && python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[1]]))' operator >/tmp/requirements.txt \
 && /opt/bbp/bin/pip install -r /tmp/requirements.txt
# README.md is the package's long description: copied with the code, so a README edit does not
# rebuild the dependency layer.
COPY README.md ./
COPY operator ./operator
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && /opt/bbp/bin/pip install --no-deps . \
 && /opt/bbp/bin/pip check \
 && /opt/bbp/bin/pip uninstall --yes pip setuptools wheel \
 && rm -f /opt/bbp/bin/bbp-notebooks-controlplane

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bbp-notebooks operator" \
      org.opencontainers.image.description="Runs NotebookSessions as Slurm jobs over ssh" \
      org.opencontainers.image.licenses="Apache-2.0"
# kinit (krb5-user) renews users' Kerberos tickets (ssh/kerberos.py runs `kinit -R`).
# Runtime libraries only (no compiler follows the build stage).
RUN apt-get update \
 && apt-get install -y --no-install-recommends krb5-user \
 && rm -rf /var/lib/apt/lists/*
RUN groupadd --gid 10001 bbp \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin bbp
COPY --from=build /opt/bbp /opt/bbp
ENV PATH=/opt/bbp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 8089
ENTRYPOINT ["bbp-notebooks-operator"]
