# A stand-in for docker.io/library/nginx:1.27-bookworm, made from Debian's nginx for
# machines that reach no image registry (tests/deploy/test_compose.py): like the official
# image, it serves /etc/nginx/conf.d/*.conf in the foreground and logs to the console.
ARG BASE_IMAGE=docker.io/library/debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/* \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
CMD ["nginx", "-g", "daemon off;"]
