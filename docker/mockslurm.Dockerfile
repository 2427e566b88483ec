# The SSH-served Slurm emulator, for kind and development (never production). Its jobs run inside
# the container as its own non-root user, with bash and the image's python3 (the job script's
# helper needs only the standard library). Build from the repository root:
#   scripts/build-images.sh   (buildah)   or   DOCKER_BUILDKIT=1 docker build -f docker/mockslurm.Dockerfile .
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
COPY docker/constraints.txt docker/constraints.txt
COPY pyproject.toml ./
# A virtualenv is the unit copied into the final image: no compiler, pip or sources follow it.
# Dependencies first (the "mockslurm" extra, from pyproject.toml, pinned by the constraints), so a
# change of our code rebuilds only the last layer. The secret "ca-bundle" (scripts/build-images.sh
# passes the host's) lets pip trust a proxy that intercepts TLS; it is in no layer.
RUN --mount=type=secret,id=ca-bundle \
    if [ -s /run/secrets/ca-bundle ]; then export PIP_CERT=/run/secrets/ca-bundle; fi \
 && python -m venv /opt/bbp \
 && python -c 'import sys, tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"][sys.argv[1]]))' mockslurm >/tmp/requirements.txt \
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
LABEL org.opencontainers.image.title="bbp-notebooks mock Slurm" \
      org.opencontainers.image.description="Slurm 22.05 emulator behind ssh, for tests and kind" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --gid 10001 bbp \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /var/lib/mockslurm \
      --shell /bin/bash bbp \
 && mkdir -p /var/lib/mockslurm \
 && chown 10001:10001 /var/lib/mockslurm
COPY --from=build /opt/bbp /opt/bbp
ENV PATH=/opt/bbp/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 2222 2223
ENTRYPOINT ["bbp-notebooks-mockslurm"]
CMD ["--config", "/etc/mockslurm/config/config.yaml"]
