#!/usr/bin/env bash
# `just test`: every check CI runs. Runs all steps even when one fails (one run shows every
# failure), prints each step's verdict and the summed test counts, exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
logs=target/ci-logs
mkdir -p "$logs"
steps=(fmt-check clippy cargo-test validate lint-workflows e2e)
declare -A verdict secs
passed=0
failed=0
for step in "${steps[@]}"; do
  echo "==> just $step"
  start=$SECONDS
  just "$step" 2>&1 | tee "$logs/$step.log"
  rc=${PIPESTATUS[0]}
  secs[$step]=$((SECONDS - start))
  if [ "$rc" -eq 0 ]; then verdict[$step]=ok; else verdict[$step]="FAILED (exit $rc)"; fi
  case "$step" in
    cargo-test)
      p=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$logs/$step.log" | awk '{s+=$4} END {print s+0}')
      f=$(grep -Eo 'test result: [A-Za-z]+\. [0-9]+ passed; [0-9]+ failed' "$logs/$step.log" | awk '{s+=$6} END {print s+0}')
      ;;
    validate)
      p=$(sed -n 's/^manifests: \([0-9]*\) passed, \([0-9]*\) failed$/\1/p' "$logs/$step.log" | tail -n1)
      f=$(sed -n 's/^manifests: \([0-9]*\) passed, \([0-9]*\) failed$/\2/p' "$logs/$step.log" | tail -n1)
      ;;
    e2e)
      last=$(grep -E '^=+ .*(passed|failed|error).* in [0-9.]+s' "$logs/$step.log" | tail -n1)
      p=$(grep -Eo '[0-9]+ passed' <<<"$last" | grep -Eo '[0-9]+' || true)
      f=$(( $(grep -Eo '[0-9]+ failed' <<<"$last" | grep -Eo '[0-9]+' || echo 0) + $(grep -Eo '[0-9]+ errors?' <<<"$last" | grep -Eo '[0-9]+' || echo 0) ))
      ;;
    *)
      p=0; f=0
      if [ "$rc" -eq 0 ]; then p=1; else f=1; fi
      ;;
  esac
  p=${p:-0}; f=${f:-0}
  # a failing step with no counted failure (build error, crash) still counts as one failure
  if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then f=1; fi
  passed=$((passed + p)); failed=$((failed + f))
  verdict[$step]="${verdict[$step]}: $p passed, $f failed, ${secs[$step]} s"
done
echo
echo "==> summary (logs in $logs/)"
for step in "${steps[@]}"; do printf '  %-15s %s\n' "$step" "${verdict[$step]}"; done
echo "tests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
