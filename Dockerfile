# syntax=docker/dockerfile:1
# The veil image: one binary (`veil relay`, `veil allocator`, `veil check-config`, ...) on a
# minimal base with glibc and nothing else: no shell, no package manager, non-root (uid 65532).
#
#   docker build -t veil:0.1.0 .
#
# builds the binary in the Rust image and ships it on distroless `cc`. Two arguments make the
# same final stage from other parts, as CI does (`.ci/image.sh`: no registry there):
#   BASE    the base image (default distroless cc-debian12:nonroot; CI: a root filesystem of
#           Debian packages made with mmdebstrap and imported);
#   BINARY  where the binary comes from: `build` (default, the stage below) or `prebuilt` (the
#           context holds `image/veil` and `image/veil.debug`, built and split beforehand).
# The binary is stripped; its debug info is `veil.debug` (GNU debuglink):
#   docker build --target debuginfo -o type=local,dest=. .
ARG BASE=gcr.io/distroless/cc-debian12:nonroot
ARG BINARY=build

# Build stage: the toolchain the workspace pins (rust-version in Cargo.toml) or newer.
FROM rust:1.95-bookworm AS build
WORKDIR /src
# clang and the BPF headers build the XDP fast path (relay/build.rs); without them the image
# has none (fast_path.mode xdp then refuses to start, auto runs without it).
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends clang-19 libbpf-dev \
 && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin veil \
 && mkdir -p /out/image \
 && objcopy --only-keep-debug target/release/veil /out/image/veil.debug \
 && objcopy --strip-debug --add-gnu-debuglink=/out/image/veil.debug target/release/veil /out/image/veil

# The binary built beforehand (CI).
FROM scratch AS prebuilt
COPY image/ /out/image/

FROM ${BINARY} AS binary

# The debug info alone, to keep beside the image.
FROM scratch AS debuginfo
COPY --from=binary /out/image/veil.debug /veil.debug

FROM ${BASE}
COPY --from=binary --chmod=0755 /out/image/veil /usr/local/bin/veil
# The chart mounts /etc/veil (config, secrets) and /var/lib/veil/geo read-only; the root
# filesystem stays read-only too.
USER 65532:65532
EXPOSE 3478/udp 9478/tcp 8480/tcp
ENTRYPOINT ["/usr/local/bin/veil"]
CMD ["--help"]
