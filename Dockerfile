# syntax=docker/dockerfile:1
# Multi-stage build. Targets:
#   operator - the Kopf operator (no torch)
#   sidecar  - the per-pod sidecar (no torch)
#   trainer  - the trainer image: our SDK plus torch (user code goes on top of it)

# One exact base for every stage, so a rebuild does not silently change Python or Debian.
ARG PYTHON_IMAGE=python:3.11.13-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# where torch comes from: CPU wheels by default; a CUDA index for a GPU trainer (examples/gpu.yaml)
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY sidecar ./sidecar
RUN python -m venv /opt/core \
 && /opt/core/bin/pip install . \
 && python -m venv /opt/train \
 && /opt/train/bin/pip install --extra-index-url "${TORCH_INDEX}" '.[train]'

FROM ${PYTHON_IMAGE} AS runtime-base
RUN groupadd --system --gid 10001 chaos \
 && useradd --system --uid 10001 --gid chaos --home-dir /home/chaos --create-home chaos
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
WORKDIR /home/chaos

FROM runtime-base AS operator
COPY --from=build /opt/core /opt/core
ENV PATH=/opt/core/bin:$PATH
# metrics (chart value metrics.port) and the liveness endpoint
EXPOSE 8080 8081
ENTRYPOINT ["chaos-train", "operator"]

FROM runtime-base AS sidecar
COPY --from=build /opt/core /opt/core
ENV PATH=/opt/core/bin:$PATH
# the peer port: peer API, trainer API and /metrics
EXPOSE 7070
ENTRYPOINT ["chaos-train", "sidecar"]

FROM runtime-base AS trainer
COPY --from=build /opt/train /opt/train
ENV PATH=/opt/train/bin:$PATH
# the bundled example the manifests in examples/ run: chaos-train run /opt/chaos/examples/train/mlp.py
COPY examples/train /opt/chaos/examples/train
# a job's pod template sets the trainer's command (chaos-train run SCRIPT: the bundled example
# or the user's script on top of this image); without one the image prints the CLI's help
ENTRYPOINT ["chaos-train"]
CMD ["--help"]
