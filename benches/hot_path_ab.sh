#!/usr/bin/env bash
# The hot-path benchmark at another revision and at the working tree, run alternately, medians.
#
#   benches/hot_path_ab.sh REV [rounds]     (run by hand; ~1 min per round)
#
# Builds `cargo bench -p veil-relay --bench hot_path` for REV (in a temporary worktree, its own
# target directory) and for the working tree, then runs the two binaries alternately `rounds`
# times (3 by default) and prints, per benchmark, the median of criterion's estimates for each,
# their ratio and every run, so that a change is read against the run-to-run spread.
set -euo pipefail
cd "$(dirname "$0")/.."
REV=${1:?usage: benches/hot_path_ab.sh REV [rounds]}
ROUNDS=${2:-3}
TARGET=${CARGO_TARGET_DIR:-$PWD/target}
WT=$(mktemp -d /tmp/veil-ab.XXXXXX)
trap 'git worktree remove --force "$WT" >/dev/null 2>&1 || true' EXIT
git worktree add --detach -f "$WT" "$REV" >/dev/null
# Each tree in its own target directory: cargo names a workspace's path crates by their place
# in the workspace, so the two trees' crates share artifact names, and with one directory the
# second build could take the first's artifacts for fresh (by mtime) and link them.
bench_bin() {  # $1 tree, $2 target directory
  (cd "$1" && CARGO_TARGET_DIR=$2 cargo bench -p veil-relay --bench hot_path --no-run \
    --message-format=json 2>/dev/null) |
    python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m["target"]["name"]=="hot_path" and m.get("executable"):
        print(m["executable"])'
}
BEFORE=$(bench_bin "$WT" "$TARGET/ab-rev")
AFTER=$(bench_bin "$PWD" "$TARGET")
python3 - "$BEFORE" "$AFTER" "$ROUNDS" "$REV" <<'PY'
import collections, re, statistics, subprocess, sys
before, after, rounds, rev = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
unit = {"ns": 1, "µs": 1e3, "ms": 1e6}
res = collections.defaultdict(lambda: collections.defaultdict(list))
for _ in range(rounds):
    for name, exe in (("rev", before), ("tree", after)):
        out = subprocess.run([exe, "--bench"], capture_output=True, text=True).stdout
        cur = None
        for line in out.splitlines():
            m = re.match(r"^(\S+/\S+)", line)
            if m:
                cur = m.group(1)
            t = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
            if t and cur:
                res[cur][name].append(float(t.group(1)) * unit[t.group(2)])
                cur = None
print(f"{'benchmark':42s} {rev[:10]:>10s} {'tree':>10s}  ratio  runs (ns)")
for k, v in res.items():
    b, a = statistics.median(v["rev"]), statistics.median(v["tree"])
    runs = " ".join(f"{x:.1f}" for x in v["rev"]) + " | " + " ".join(f"{x:.1f}" for x in v["tree"])
    print(f"{k:42s} {b:10.1f} {a:10.1f}  {a / b:5.2f}  {runs}")
PY
