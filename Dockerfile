# syntax=docker/dockerfile:1
# One image for every PluginGuard entry point: `pluginguard webhook serve`,
# `pluginguard operator run` and `pluginguard node-agent` (the chart picks one per
# workload through the container's args).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: PluginGuard's wheel and the wheels of everything it depends on ----------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY pluginguard/ pluginguard/
COPY operator/ operator/
COPY webhooks/ webhooks/
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

# --- the image: the wheels installed, no compiler, no sources, no pip ---------------
FROM ${PYTHON_IMAGE}
# libseccomp2: the syscall tables the seccomp profiles are generated from.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libseccomp2 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 65532 pluginguard \
 && useradd --system --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
      --shell /usr/sbin/nologin pluginguard
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels pluginguard \
 && python -m pip uninstall --yes pip
# The root filesystem is mounted read-only in the cluster: no bytecode written at run
# time (pip compiled it at install), and logs are not held back in a buffer.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8443
ENTRYPOINT ["pluginguard"]
CMD ["--help"]
