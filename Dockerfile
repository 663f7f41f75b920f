# discoverd: small, non-root, healthchecked. Build: docker build -t discoverd .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY discoverd ./discoverd
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/discoverd --create-home discoverd
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001
WORKDIR /var/lib/discoverd
ENV DISCOVERD_LISTEN=0.0.0.0:8087 \
    DISCOVERD_DNS_LISTEN=0.0.0.0:8053 \
    DISCOVERD_DATA_DIR=/var/lib/discoverd \
    PYTHONUNBUFFERED=1
EXPOSE 8087/tcp 8053/udp 8053/tcp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8087/health', timeout=2).status != 200)"]
ENTRYPOINT ["discoverd"]
CMD ["serve"]
