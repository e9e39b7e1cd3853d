# syntax=docker/dockerfile:1
# collab-server in a container (docs/deployment.md, "A container"):
#
#     docker build -t collab-server .
#     docker run -d --name collab -p 8000:8000 -v collab-data:/data collab-server
#     docker exec collab collab token alice
#
# Settings come from COLLAB_* variables (docker run -e ...); with none, it serves
# SQLite under /data and creates its JWT secret there, as `collab serve` does anywhere.

ARG PYTHON_VERSION=3.12

# -- build: the server and every dependency as wheels ---------------------------------
FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY collab ./collab
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

# -- runtime: those wheels installed offline, nothing to build with ---------------------
FROM python:${PYTHON_VERSION}-slim
RUN groupadd --system --gid 10001 collab \
    && useradd --system --uid 10001 --gid collab --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin collab \
    && install -d -o collab -g collab -m 0700 /data
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels collab-server

ENV COLLAB_HOST=0.0.0.0 \
    COLLAB_PORT=8000 \
    COLLAB_DATA_DIR=/data \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# the SQLite database and the generated JWT secret: keep them on a volume
VOLUME /data
WORKDIR /data
USER collab
EXPOSE 8000

# slim images have no curl: ask /readyz with Python itself (non-2xx raises, exit 1)
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('COLLAB_PORT', '8000'), timeout=4)"]

ENTRYPOINT ["collab"]
CMD ["serve"]
