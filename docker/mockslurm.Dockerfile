# syntax=docker/dockerfile:1
# The SSH-served Slurm emulator, for kind and development (never production). Its jobs run inside
# the container as its own non-root user, with bash and the image's python3 (the job script's
# helper needs only the standard library). Build from the repository root:
#   docker build -f docker/mockslurm.Dockerfile -t bbp-notebooks/mockslurm:0.1.0 .
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
RUN python -m venv /opt/bbp \
 && /opt/bbp/bin/pip install . \
 && /opt/bbp/bin/pip uninstall --yes kubernetes pip setuptools wheel \
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
