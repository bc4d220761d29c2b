# The exporters of nginx's side, as containers beside nginx (docker-compose.yml, deploy/kubernetes):
# Debian's `mtail` (nginx/access_log.mtail over nginx's JSON access log, which nginx sends it as
# datagrams on a unix socket in the volume they share: every answer by status and by the limit that
# refused it, with nginx's time) and `prometheus-nginx-exporter` (nginx's stub_status, on a unix
# socket in the same volume: connections). One image, two containers with their own commands.
#   docker build -f nginx/exporters.Dockerfile -t fraud-scoring-nginx-exporters nginx/
# Pin DEBIAN_IMAGE by digest on a machine that can pull (`docker buildx imagetools inspect
# debian:bookworm-slim`); `make container-test` passes a local stand-in built from Debian's packages.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
# wget for the health checks (GET /metrics); nothing else beyond the two exporters.
RUN apt-get update \
 && apt-get install -y --no-install-recommends mtail prometheus-nginx-exporter wget \
 && rm -rf /var/lib/apt/lists/*
COPY access_log.mtail /etc/mtail/access_log.mtail
# nginx's uid and gid (the official unprivileged image's): the stub_status socket nginx creates is
# writable by its owner only, and nginx must write to the socket mtail creates.
USER 101:101
EXPOSE 3903 9113
