# sipswarm worker agent.
#   docker build -t sipswarm .
#   docker run --rm --network host -e CONTROLLER_URL=wss://controller.example.com/v1/worker \
#     -e WORKER_TOKEN=... sipswarm
# The same install steps run in CI (scripts/test.sh: pip install of the tree), so a broken
# dependency fails there too.

# Builder stage: compiles the C RTP hot path (sipswarm._rtpcore, see setup.py) into a wheel
# with every dependency's wheel beside it; the final stage installs them without a compiler.
FROM python:3.11-slim-bookworm AS builder
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# the extension is optional in setup.py; here its absence fails the build
RUN pip wheel . -w /wheels \
    && python -m zipfile -l /wheels/sipswarm-*.whl | grep -q '_rtpcore.*\.so'

FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    STATE_DIR=/var/lib/sipswarm \
    HEALTH_PORT=3030 \
    LOG_FORMAT=json

# Wheels exist for every dependency on amd64/arm64 (numpy, uvloop, av, pylibsrtp); the only
# compiled code of our own (sipswarm._rtpcore) was built in the builder stage above, so the
# final image needs no compiler either.
COPY --from=builder /wheels /wheels
RUN pip install --no-index --find-links /wheels sipswarm && rm -rf /wheels

# A numeric UID/GID: Kubernetes' runAsNonRoot can only verify a numeric USER.
RUN groupadd --system --gid 10001 sipswarm \
    && useradd --system --uid 10001 --gid sipswarm --home-dir /var/lib/sipswarm --create-home sipswarm
USER 10001:10001
WORKDIR /var/lib/sipswarm

EXPOSE 3030
HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('HEALTH_PORT', '3030'), timeout=2); sys.exit(0)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["sipswarm", "agent"]
