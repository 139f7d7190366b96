#!/usr/bin/env bash
# Runs the test jobs in lanes side by side: every test binary of the workspace, the
# doc-tests, `cargo clippy -D warnings`, and the other suites (SDKs, MCP, OpenAPI), each a
# job in one queue that BURROW_TEST_LANES lanes (default 3) take from, longest first by the
# times of the last run. Jobs that boot VMs under emulation are CPU-heavy and run one at a
# time. Each job's output goes to its own log under $BURROW_TEST_LOGS (default
# /tmp/burrow-test), each lane's to lane-N.log there; a failed job's log is printed whole.
# Exit status is non-zero when any job failed.
#
# Usage: test-jobs.sh [REGEX]   only the jobs whose names match (e.g. 'burrowd/(vm|network)$',
#                               'python-sdk'); names are printed as jobs finish.
# Needs the binaries the tests start (scripts/build.sh debug); scripts/test.sh does all that.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/burrow/target}
export CARGO_TERM_COLOR=never
export BURROW_TEST_STRICT=${BURROW_TEST_STRICT:-1}
only=${1:-}
lanes=${BURROW_TEST_LANES:-3}
logs=${BURROW_TEST_LOGS:-/tmp/burrow-test}
# How long each job took last time, for the order of the queue.
times_file=$CARGO_TARGET_DIR/burrow-test-times.tsv

echo "==> build the test binaries"
rm -rf "$logs"
mkdir -p "$logs/jobs"
cargo test --workspace --no-run --message-format=json-render-diagnostics >"$logs/artifacts.json"

# The queue: one line per job, "seconds<TAB>name<TAB>dir<TAB>command". A job not timed before
# counts as 30 s. Heavy jobs boot VMs, under TCG where there is no KVM: two at once starve
# each other's guests (and their tests' timeouts), so they run one at a time.
heavy=" burrowd/vm burrowd/network burrowd/conformance burrowd/vm_jail burrowd/ingress burrowd/docs burrowd/prestart burrow-engine/vm_boot "
python3 - "$logs/artifacts.json" "$times_file" "$only" >"$logs/queue.unsorted" <<'EOF'
import json, os, re, sys

last = {}
if os.path.exists(sys.argv[2]):
    for line in open(sys.argv[2]):
        name, _, secs = line.rstrip("\n").partition("\t")
        last[name] = float(secs)
# Before the first timed run: the figures of a CI run (scripts/test.sh, December 2026).
first = {"burrowd/vm": 108, "burrowd/network": 75, "openapi": 82, "python-sdk": 38,
         "typescript-sdk": 36, "burrowd/workloads": 37, "burrowd/dev_image": 37,
         "burrowd/conformance": 27, "burrowd/vm_jail": 23, "burrowd/faults": 20,
         "clippy": 60, "doc-tests": 30, "mcp": 8}
jobs = []
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") != "compiler-artifact" or not m.get("executable") or not m["profile"]["test"]:
        continue
    # "path+file:///…/crates/burrowd#0.1.0", or "…#name@0.1.0" when the names differ.
    url, _, version = m["package_id"].partition("#")
    pkg = version.split("@")[0] if "@" in version else url.rstrip("/").split("/")[-1]
    kind, target = m["target"]["kind"][0], m["target"]["name"]
    name = f"{pkg}/{target}" if kind == "test" else f"{pkg}/{kind}:{target}"
    d = os.path.dirname(m["manifest_path"])
    # As `cargo test` runs it: in its package's directory, which it is told.
    jobs.append((name, d, f"CARGO_MANIFEST_DIR={d} {m['executable']} --test-threads=4"))
jobs.append(("doc-tests", ".", "cargo test --workspace --doc -- --test-threads=4"))
jobs.append(("clippy", ".", "cargo clippy --workspace --all-targets -- -D warnings"))
for suite in ["python-sdk", "typescript-sdk", "mcp", "openapi"]:
    if os.path.exists(f"scripts/test-{suite}.sh"):
        jobs.append((suite, ".", f"bash scripts/test-{suite}.sh"))
for name, d, cmd in jobs:
    if sys.argv[3] and not re.search(sys.argv[3], name):
        continue
    print(f"{last.get(name, first.get(name, 30))}\t{name}\t{d}\t{cmd}")
EOF
sort -t$'\t' -k1,1 -rn "$logs/queue.unsorted" | cut -f2- >"$logs/queue"
: >"$logs/results"

# Takes the next job the lane may run (a heavy one only while no other heavy one runs);
# prints it, or nothing when the queue is empty. Waits while only heavy jobs are left and one
# of them is running.
next_job() {
  local job=""
  while :; do
    job=$(flock "$logs/queue.lock" python3 - "$logs" "$heavy" <<'EOF'
import os, sys
logs, heavy = sys.argv[1], sys.argv[2]
path, busy = f"{logs}/queue", f"{logs}/heavy.busy"
jobs = open(path).read().splitlines()
for i, job in enumerate(jobs):
    is_heavy = f" {job.split(chr(9))[0]} " in heavy
    if is_heavy and os.path.exists(busy):
        continue
    if is_heavy:
        open(busy, "w").close()
    open(path, "w").write("".join(j + "\n" for j in jobs[:i] + jobs[i + 1:]))
    print(job)
    break
else:
    print("WAIT" if jobs else "")
EOF
    )
    [ "$job" = WAIT ] || break
    sleep 1
  done
  printf '%s' "$job"
}

lane() {
  local n=$1 job name dir cmd start rc
  while job=$(next_job) && [ -n "$job" ]; do
    IFS=$'\t' read -r name dir cmd <<<"$job"
    local log="$logs/jobs/${name//\//__}.log"
    start=$(date +%s.%N)
    rc=0
    (cd "$dir" && echo "==> $name: $cmd" && eval "$cmd") >"$log" 2>&1 </dev/null || rc=$?
    [[ $heavy == *" $name "* ]] && rm -f "$logs/heavy.busy"
    cat "$log" >>"$logs/lane-$n.log"
    awk -v a="$start" -v b="$(date +%s.%N)" -v name="$name" -v rc="$rc" -v n="$n" \
      'BEGIN {printf "%.1f\t%s\t%s\t%s\n", b - a, name, rc, n}' >>"$logs/results"
    echo "    lane $n: $name $([ "$rc" = 0 ] && echo ok || echo "FAILED ($rc)")"
  done
}

echo "==> tests: $(wc -l <"$logs/queue") jobs in $lanes lanes (logs in $logs)"
start=$SECONDS
pids=()
for n in $(seq 1 "$lanes"); do
  lane "$n" &
  pids+=($!)
done
wait "${pids[@]}"
wall=$((SECONDS - start))

status=0
while IFS=$'\t' read -r secs name rc n; do
  [ -n "$name" ] && [ "$rc" != 0 ] || continue
  status=1
  echo "==> FAILED: $name (lane $n, exit $rc); its whole log ($logs/jobs/${name//\//__}.log):"
  cat "$logs/jobs/${name//\//__}.log" || true
done <"$logs/results"

# Next run's queue order (the jobs that did not run keep their last time).
{ awk -F'\t' '{print $2 "\t" $1}' "$logs/results"; cat "$times_file" 2>/dev/null || true; } \
  | awk -F'\t' '!seen[$1]++' >"$times_file.tmp" && mv "$times_file.tmp" "$times_file"

cat "$logs"/jobs/*.log >"$logs/all.log"
passed=$(grep -Eo '^test result: .*' "$logs/all.log" | awk '{p+=$4; f+=$6} END {print p+0}')
failed=$(grep -Eo '^test result: .*' "$logs/all.log" | awk '{p+=$4; f+=$6} END {print f+0}')
echo "$passed passed, $failed failed"
# The ten slowest test binaries and the total, so growth is seen.
suite_re='^(python-sdk|typescript-sdk|mcp|openapi|clippy)$'
echo "==> slowest test binaries"
awk -F'\t' -v re="$suite_re" '$2 !~ re {printf "%8.1f s  %s%s\n", $1, $2, ($3 == 0 ? "" : "  FAILED")}' "$logs/results" \
  | sort -rn | head -10
awk -F'\t' -v re="$suite_re" '$2 !~ re {s += $1} END {printf "%8.1f s  total in test binaries\n", s}' "$logs/results"
echo "==> other suites"
awk -F'\t' -v re="$suite_re" '$2 ~ re {printf "%8.1f s  %s: %s\n", $1, $2, ($3 == 0 ? "ok" : "FAILED")}' "$logs/results"
awk -F'\t' '{s[$4] += $1; n[$4]++} END {for (l in s) printf "    lane %s: %d jobs, %.0f s\n", l, n[l], s[l]}' "$logs/results" | sort
echo "==> $wall s for the tests on $lanes lanes"
exit $status
