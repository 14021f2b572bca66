# An image that runs ts-overlayfs. Run it with access to FUSE, e.g.:
#   docker run --rm -it --device /dev/fuse --cap-add SYS_ADMIN IMAGE -f -o lowerdir=/l1:/l2 /mnt
FROM node:20-bookworm-slim AS build
# gcc and libc6-dev: the build compiles src/sys/caller.c (dist/native/libtsovl-caller.so).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY package.json package-lock.json tsconfig.json ./
RUN npm ci --no-audit --no-fund
COPY src ./src
COPY test ./test
COPY scripts/build-caller ./scripts/
RUN npm run build && npm prune --omit=dev

FROM node:20-bookworm-slim
# libfuse2: loaded by fuse-native's prebuilt addon; fuse3: fusermount3 for unmounting.
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends libfuse2 fuse3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/ts-overlayfs
COPY --from=build /src/package.json ./
COPY --from=build /src/node_modules ./node_modules
COPY --from=build /src/dist ./dist
COPY bin ./bin
RUN ln -s /opt/ts-overlayfs/bin/ts-overlayfs /usr/local/bin/ts-overlayfs
ENTRYPOINT ["ts-overlayfs"]
CMD ["--help"]
