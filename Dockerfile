# syntax=docker/dockerfile:1
# rnn-streamer: one image for every role in docker-compose.yml (trainer, converter, topic-init,
# streamer serve, load generator). Build: docker build -t rnn-streamer .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2

# A fixed non-root user. /models is created here and owned by it, so a fresh named volume mounted
# there inherits that ownership and the trainer can write the model into it.
RUN groupadd --system --gid 10001 streamer \
 && useradd --system --uid 10001 --gid streamer --home-dir /home/streamer --create-home \
      --shell /usr/sbin/nologin streamer \
 && mkdir -p /models \
 && chown streamer:streamer /models

WORKDIR /app

# Dependencies first: this layer is rebuilt only when pyproject.toml changes, not on every code edit.
COPY pyproject.toml README.md ./
RUN mkdir -p models streamer \
 && touch models/__init__.py streamer/__init__.py \
 && pip install ".[confluent]" \
 && pip uninstall -y rnn-streamer \
 && rm -rf build models streamer ./*.egg-info

# The project itself (no dependency resolution again).
COPY models ./models
COPY streamer ./streamer
RUN pip install --no-deps . \
 && rm -rf build ./*.egg-info \
 && streamer --help >/dev/null

USER streamer:streamer
WORKDIR /home/streamer

# /metrics and /healthz of `streamer serve` (bind it to 0.0.0.0 inside the container: --metrics-host).
EXPOSE 9100

# Ready = /healthz answers 200, which `streamer serve` does only once the model is loaded, Kafka is
# reached and the stream state is restored; 503 before. urllib raises on 503 and on a refused
# connection, so the exit status is the readiness. No curl in slim images: python's own urllib.
HEALTHCHECK --interval=10s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('STREAMER_METRICS_PORT', '9100'), timeout=4)"]

CMD ["streamer", "serve"]
