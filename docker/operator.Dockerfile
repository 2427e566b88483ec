# syntax=docker/dockerfile:1
# The bbp-notebooks operator (kopf). Build from the repository root:
#   docker build -f docker/operator.Dockerfile -t bbp-notebooks/operator:0.1.0 .
#
# Base: python:3.11-slim-bookworm pinned by tag and digest. The digest was taken from a public record
# of Docker Hub's manifest for that tag; it could not be pulled from this development machine (no
# Docker), so `make kind-e2e` is the first place it is fetched. Bump both together.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/docker/constraints.txt
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
# A virtualenv is the unit copied into the final image: no compiler, pip or sources follow it.
# The synchronous kubernetes client (126 MB) serves only the development tools (the local
# control plane); the operator and hub use kubernetes_asyncio, kopf logs in by itself.
# python-gssapi (Kerberos: hub logins, GSSAPI ssh) builds against MIT Kerberos.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/bbp \
 && /opt/bbp/bin/pip install . \
 && /opt/bbp/bin/pip uninstall --yes kubernetes pip setuptools wheel \
 && rm -f /opt/bbp/bin/bbp-notebooks-controlplane

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bbp-notebooks operator" \
      org.opencontainers.image.description="Runs NotebookSessions as Slurm jobs over ssh" \
      org.opencontainers.image.licenses="Apache-2.0"
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
