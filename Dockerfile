# syntax=docker/dockerfile:1
# The veil image: one binary (`veil relay`, `veil allocator`, `veil check-config`, ...) on a
# distroless base with glibc and nothing else: no shell, no package manager, non-root.
#
#   docker build -t veil:0.1.0 .
#
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
 && install -D -m 0755 target/release/veil /out/veil

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/veil /usr/local/bin/veil
# The chart mounts /etc/veil (config, secrets) and /var/lib/veil/geo read-only; the root
# filesystem stays read-only too.
USER 65532:65532
EXPOSE 3478/udp 9478/tcp 8480/tcp
ENTRYPOINT ["/usr/local/bin/veil"]
CMD ["--help"]
