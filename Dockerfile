# fraudscore: the scoring service.
#
#   docker build -t fraudscore .
#   docker run --rm -p 127.0.0.1:8000:8000 -v fraudscore-registry:/var/lib/fraudscore fraudscore
#
# Out of the box it serves the embedded default: a local registry under /var/lib/fraudscore (a
# volume), where it trains the demo model on first start. The AWS mode is only environment:
# FRAUDSCORE_REGISTRY=s3://bucket/prefix, FRAUDSCORE_KMS_KEY_ID, FRAUDSCORE_BACKEND=sagemaker,
# FRAUDSCORE_ENDPOINT_NAME, ... (see infra/service.yaml); the S3 registry is then served as is.

# Both stages use the same pinned base (the virtual environment built in the first runs in the
# second); a release pipeline may pin it further with "@sha256:<digest>".

# ---------------------------------------------------------------------------- build
FROM python:3.11.14-slim-bookworm AS build

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

# The install compiles score-file's C kernels (service/_kernels.c): a compiler in this stage
# only; the runtime gets the built virtual environment, not the compiler. Its version is the
# pinned base's Debian release's (an exact pin would break at each security update).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install --yes --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

# Only what the package needs: no tests, benchmarks or infrastructure (see .dockerignore).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY service ./service
COPY training ./training

# Every dependency ships manylinux wheels; only the package's own kernels are compiled. The
# environment is made without pip, and only the runtime dependencies go in: the dev extras
# never do. Byte code is compiled here because the runtime's root filesystem is read-only.
RUN python -m venv --without-pip /opt/fraudscore \
    && pip --python /opt/fraudscore/bin/python install --no-cache-dir .

# ---------------------------------------------------------------------------- runtime
FROM python:3.11.14-slim-bookworm AS runtime

ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=unknown
LABEL org.opencontainers.image.title="fraudscore" \
      org.opencontainers.image.description="Fraud and pattern scoring with learned per-cluster K-Means thresholds, embedded or on Amazon SageMaker" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.base.name="python:3.11.14-slim-bookworm"

# The installers are not needed to run: fewer tools for an intruder, fewer CVEs to triage.
# The service's user owns only its state directory (the registry volume).
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 10001 fraudscore \
    && useradd --system --uid 10001 --gid fraudscore --no-create-home \
       --home-dir /var/lib/fraudscore --shell /usr/sbin/nologin fraudscore \
    && mkdir -p /var/lib/fraudscore \
    && chown fraudscore:fraudscore /var/lib/fraudscore

COPY --from=build /opt/fraudscore /opt/fraudscore

# FRAUDSCORE_HOST: the service's own default is loopback, unreachable from outside a container.
# Workers and port can be changed at run time; the health check follows the port.
ENV PATH=/opt/fraudscore/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    FRAUDSCORE_HOST=0.0.0.0 \
    FRAUDSCORE_PORT=8000 \
    FRAUDSCORE_WORKERS=1 \
    FRAUDSCORE_REGISTRY=/var/lib/fraudscore/registry

USER 10001:10001
WORKDIR /var/lib/fraudscore
EXPOSE 8000

# Liveness only (/healthz does no I/O); the first start trains the demo model, hence the start period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FRAUDSCORE_PORT', '8000'), timeout=3)"]

# A local registry gets the demo model when it has none (--demo-model); an s3:// registry is
# served as it is. exec: the server replaces the shell and receives the stop signal itself.
CMD ["/bin/sh", "-c", "case \"$FRAUDSCORE_REGISTRY\" in *://*) exec fraudscore serve ;; *) exec fraudscore serve --demo-model ;; esac"]
