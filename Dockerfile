# syntax=docker/dockerfile:1
# The nfs-csi image: the driver binary on a slim Debian with what mounting
# needs (mount from util-linux, mount.nfs from nfs-common).
#
#   docker build -t REGISTRY/nfs-csi:0.1.0 .
#
# The same image runs the controller and the node plugin (deploy/ picks the
# mode). Both mount, so deploy/ runs them as root, privileged; the image
# itself defaults to an unprivileged user, for everything else it can do
# (`nfs-csi crds`, `--help`).

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The crate: sources, proto/ (build.rs compiles it with protox, no protoc),
# and whatever targets Cargo.toml declares; .dockerignore leaves out the rest.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin nfs-csi \
    && install -D -m 0755 target/release/nfs-csi /out/nfs-csi

FROM debian:${DEBIAN_RELEASE}-slim
# nfs-common: mount.nfs. No rpcbind/rpc.statd in the image: NFSv4 needs
# neither; NFSv3 locking uses the host's statd (the node plugin is in the
# host network) or the nolock mount option.
RUN apt-get update \
    && apt-get install -y --no-install-recommends nfs-common util-linux mount \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/nfs-csi /usr/local/bin/nfs-csi
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/nfs-csi"]
