# syntax=docker/dockerfile:1
# Nudge's production image. The API, the worker and the migrations run from it; the
# command picks the role: `nudge api` (the default), `nudge worker`, `nudge migrate`.
# Configured only by NUDGE_* environment variables (core/config.py); see docker-compose.yml.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/nudge
WORKDIR /src
# .dockerignore keeps the local venv, caches, databases and .env out of the context.
COPY . .
RUN /opt/nudge/bin/pip install .

FROM python:3.11-slim
ENV PATH=/opt/nudge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NUDGE_API_HOST=0.0.0.0
RUN groupadd --system --gid 10001 nudge \
    && useradd --system --uid 10001 --gid nudge --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin nudge
COPY --from=build /opt/nudge /opt/nudge
# Owned by root: the app reads its code and writes nothing to disk (state lives in
# PostgreSQL and Temporal).
WORKDIR /app
USER nudge:nudge
EXPOSE 8000
CMD ["nudge", "api"]
