#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 60), then minimizes its corpus.
#
#   scripts/fuzz.sh [SECONDS]
#   FUZZ_TARGETS="obp_request" scripts/fuzz.sh 300     # only some targets
#   FUZZ_CMIN=0 scripts/fuzz.sh 60                     # keep the corpus as the run left it
#
# Needs a nightly toolchain (cargo-fuzz builds with sanitizers); installs cargo-fuzz if missing.
# The corpus lives in fuzz/corpus/<target>/ (committed, minimized), the hand-written seeds in
# fuzz/seeds/<target>/ (read, never written); crashes land in fuzz/artifacts/<target>/. Exits
# non-zero when a target crashed. See docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "usage: scripts/fuzz.sh [SECONDS]   (SECONDS per target, default 60)" >&2
  exit 2
fi
read -r -a targets <<<"${FUZZ_TARGETS:-event_decode obp_request rabo_request}"

if ! rustup toolchain list | grep -q '^nightly'; then
  echo "cargo-fuzz needs a nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

cd fuzz
cargo +nightly fuzz build
mkdir -p target
summary=()
failed=0
for target in "${targets[@]}"; do
  mkdir -p "corpus/$target" "seeds/$target"
  log="target/fuzz-$target.log"
  echo "== $target: ${seconds}s (log: fuzz/$log)"
  # -timeout: an input taking 10 s is a finding too (a hang); -max_len: requests and events
  # are small, and the 64 KiB limits are checked before any parsing.
  status=0
  cargo +nightly fuzz run "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -max_len=8192 -print_final_stats=1 >"$log" 2>&1 || status=$?
  runs=$(grep -o 'stat::number_of_executed_units:[[:space:]]*[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  rate=$(grep -o 'stat::average_exec_per_sec:[[:space:]]*[0-9]*' "$log" | grep -o '[0-9]*$' || true)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || true)
  if [ "$status" -ne 0 ]; then
    failed=1
    grep -E "panicked at|ERROR: libFuzzer|SUMMARY|Test unit written" "$log" | head -n 8 || true
    summary+=("$target: CRASHED after ${runs:-?} runs; see fuzz/$log and fuzz/artifacts/$target/")
    continue
  fi
  if [ "${FUZZ_CMIN:-1}" != 0 ]; then
    # Keep the smallest set of inputs that covers every feature the corpus reaches (libFuzzer's
    # set-cover merge gives about half the files of `cargo fuzz cmin` for the same features).
    merged="target/merge-$target"
    rm -rf "$merged" && mkdir -p "$merged"
    cargo +nightly fuzz run "$target" "$merged" "corpus/$target" -- \
      -set_cover_merge=1 -max_len=8192 >>"$log" 2>&1
    rm -rf "corpus/$target" && mv "$merged" "corpus/$target"
  fi
  files=$(find "corpus/$target" -type f | wc -l)
  bytes=$(find "corpus/$target" -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')
  summary+=("$target: ${seconds}s, ${runs:-?} runs (${rate:-?}/s), coverage ${cov:-?}, corpus $files files / $bytes bytes")
done

echo
printf '%s\n' "${summary[@]}"
exit "$failed"
