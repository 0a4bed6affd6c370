# A stand-in for docker.io/library/redis:7-bookworm, made from Debian's redis-server
# for machines that reach no image registry (tests/deploy/test_compose.py): the same
# command (redis-server), redis-cli for the health check, data in /data.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends redis-server \
 && rm -rf /var/lib/apt/lists/* && mkdir /data && chown redis:redis /data
USER redis
WORKDIR /data
CMD ["redis-server", "--protected-mode", "no"]
