# configurable-http-proxy for the hub, built here from Debian's package (node-configurable-http-proxy
# and its Node.js), so no image of the chart comes from elsewhere. Build from the repository root:
#   scripts/build-images.sh   (buildah)   or   docker build -f docker/proxy.Dockerfile .
#
# Base: the same Debian 12 base as the other images (docker/operator.Dockerfile says where its
# digest comes from); `BASE=local scripts/build-images.sh` uses the one built here by debootstrap.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:2e32f7d302adc1c37428355c1e646897c0c53f4fd60b6a551245fb90ee129f91

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="bbp-notebooks proxy" \
      org.opencontainers.image.description="configurable-http-proxy (Debian's package) for the hub" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN apt-get update \
 && apt-get install -y --no-install-recommends node-configurable-http-proxy \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 bbp \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin bbp
USER 10001:10001
EXPOSE 8000 8001
ENTRYPOINT ["configurable-http-proxy"]
