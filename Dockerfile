# An image that runs ts-overlayfs. Run it with access to FUSE, e.g.:
#   docker run --rm -it --device /dev/fuse --cap-add SYS_ADMIN IMAGE -f -o lowerdir=/l1:/l2 /mnt
FROM node:20-bookworm-slim AS build
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund
COPY src ./src
COPY test ./test
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
# fuse3: fusermount3, for mounting and unmounting without privilege.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ts-overlayfs
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY bin ./bin
RUN ln -s /opt/ts-overlayfs/bin/ts-overlayfs /usr/local/bin/ts-overlayfs
ENTRYPOINT ["ts-overlayfs"]
CMD ["--help"]
