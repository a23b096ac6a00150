# aigateway in a container: a slim Python base, the package installed as a wheel, a user
# of its own, and the state (SQLite file, usage journal) in the /data volume.
#   docker build -t aigateway .
#   docker run -d -p 8000:8000 -v aigateway:/data -e OLLAMA_BASE_URL=http://host:11434 aigateway
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY aigateway ./aigateway
RUN pip install . \
    && rm -rf /src \
    && useradd --system --uid 10001 --user-group --home-dir /data --shell /usr/sbin/nologin aigateway \
    && mkdir -p /data \
    && chown aigateway:aigateway /data \
    && chmod 0700 /data

USER aigateway
WORKDIR /data
VOLUME ["/data"]

# Listen on every interface inside the container; the SQLite file and the usage journal
# live in /data. DATABASE_URL (PostgreSQL) wins over TOKEN_DB_PATH when set.
ENV HOST=0.0.0.0 \
    PORT=8000 \
    TOKEN_DB_PATH=/data/tokens.db

EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-m", "aigateway.healthcheck"]

# The CLIs are in the image too: docker exec CONTAINER gen-api-key -g alice laptop
ENTRYPOINT ["aigateway"]
