# syntax=docker/dockerfile:1
# JupyterHub with the NotebookSession spawner (and oauthenticator for the generic-oauth choice).
# The proxy is the upstream configurable-http-proxy image, so no Node.js here. Build from the root:
#   docker build -f docker/hub.Dockerfile -t bbp-notebooks/hub:0.1.0 .
#
# Base pinned by tag and digest; see docker/operator.Dockerfile for where the digest comes from.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_CONSTRAINT=/src/docker/constraints.txt
WORKDIR /src
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml README.md ./
COPY operator ./operator
# python-gssapi (Kerberos: hub logins, GSSAPI ssh) builds against MIT Kerberos.
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev libkrb5-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/bbp \
 && /opt/bbp/bin/pip install '.[hub]' oauthenticator \
 && /opt/bbp/bin/pip uninstall --yes kubernetes pip setuptools wheel \
 && rm -f /opt/bbp/bin/bbp-notebooks-controlplane

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bbp-notebooks hub" \
      org.opencontainers.image.description="JupyterHub with the NotebookSession spawner" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 bbp \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /srv/jupyterhub \
      --shell /usr/sbin/nologin bbp \
 && mkdir -p /srv/jupyterhub \
 && chown 10001:10001 /srv/jupyterhub
COPY --from=build /opt/bbp /opt/bbp
ENV PATH=/opt/bbp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
WORKDIR /srv/jupyterhub
USER 10001:10001
EXPOSE 8081
ENTRYPOINT ["jupyterhub"]
CMD ["--config=/etc/jupyterhub/jupyterhub_config.py"]
