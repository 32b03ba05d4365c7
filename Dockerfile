# syntax=docker/dockerfile:1
# A meshcompute node.  Build:  docker build -t meshcompute .
# One node (a new mesh):       docker run --rm --shm-size=2g -p 7777:7777 -e MESH_TOKEN=... meshcompute
# Another, joining it:         docker run --rm --shm-size=2g -e MESH_TOKEN=... -e MESH_JOIN=HOST:7777 meshcompute
# docs/operating.md has the rest (Kubernetes, metrics, the environment).

# ---- build: wheels of meshcompute and of every dependency (no compiler needed at run time)
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY meshcompute ./meshcompute
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# ---- run: the wheels installed, tini as PID 1, a non-root user
FROM python:3.11-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
RUN useradd --create-home --uid 10001 --user-group mesh
USER 10001:10001
WORKDIR /home/mesh
# Unbuffered: the node's log reaches `docker logs` as it is written.
ENV PYTHONUNBUFFERED=1 \
    MESH_PORT=7777
# 7777: the mesh (CURVE-encrypted ZeroMQ); 9090: Prometheus metrics, when MESH_METRICS_PORT=9090.
EXPOSE 7777 9090
HEALTHCHECK --interval=10s --timeout=8s --start-period=30s --retries=3 \
    CMD ["mesh", "status", "--local", "--check"]
# tini forwards SIGTERM to mesh-node (which becomes `mesh start/join --block`: the node leaves
# the mesh and exits 0) and reaps orphans; the node's processes die with it (parent-death signal).
ENTRYPOINT ["tini", "--"]
CMD ["mesh-node"]
