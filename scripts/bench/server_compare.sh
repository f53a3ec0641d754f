#!/usr/bin/env bash
# Server throughput: imgclass serve (lite, full) vs the FastAPI + PyTorch service it replaces.
#
#   scripts/bench/server_compare.sh            # DURATION=30 CONNECTIONS=4 THREADS=2 ROUNDS=1 by default
#
# ROUNDS=N measures every server N times, alternating the order in each pair (round 1: baseline
# first, round 2: imgclass first, ...), and prints each round's ratios and their median, so that a
# host that drifts slower or faster during the run does not favour either side. ONLY=a,b limits the
# servers (names below).
#
# Same machine, same run, same load generator: wrk (apt-get install wrk), 640x480 JPEG, POST with the
# raw bytes, 4 connections. Baseline: scripts/bench/baseline_app.py under gunicorn with one uvicorn
# worker (torchvision model, PIL preprocessing, torch threads = THREADS). imgclass: `imgclass serve
# --profile lite|full` on torchvision's random weights exported to .safetensors (the baseline runs the
# same architecture with random weights: throughput does not depend on the values).
# Prints req/s, p99 latency, time from start to first answer, resident memory after warm-up and
# right after the load and 2 s later (VmRSS, summed over the server's processes), how many answers
# imgclass gave from its fallback model (its metrics), and the ratios.
#
# Needs: wrk, curl, python3; the virtualenv of common.py (IMGCLASS_BENCH_VENV, pip-installs torch
# torchvision fastapi uvicorn gunicorn pillow); IMGCLASS_BIN or a cargo toolchain. Not run by CI.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DURATION="${DURATION:-30}"
CONNECTIONS="${CONNECTIONS:-4}"
THREADS="${THREADS:-2}"
PORT="${PORT:-18931}"

command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl not found" >&2; exit 1; }

PY="$(cd "$HERE" && python3 -c 'import common; print(common.venv_python({"torch": "torch", "torchvision": "torchvision", "fastapi": "fastapi", "uvicorn": "uvicorn", "gunicorn": "gunicorn", "PIL": "pillow"}))')"
BIN="$(cd "$HERE" && python3 -c 'import common; print(common.imgclass_binary())')"
VENV_BIN="$(dirname "$PY")"

WORK="$(mktemp -d -t imgclass-server-bench-XXXXXX)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
  if [[ -n "${KEEP_WORK:-}" ]]; then echo "[bench] kept $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

echo "[bench] weights and a 640x480 JPEG in $WORK" >&2
for m in mobilenet_v3_large wide_resnet50_2; do
  "$PY" "$HERE/compare_models.py" --worker prepare --model "$m" --batches "" --dir "$WORK" >/dev/null
  rm -f "$WORK/$m.pth"
done
"$PY" - "$WORK/img.jpg" <<'EOF'
import sys
import numpy as np
from PIL import Image
rng = np.random.default_rng(0)
y, x = np.mgrid[0:480, 0:640]
img = np.stack([x * 255 / 640, y * 255 / 480, (x + y) * 255 / 1120], -1)
img = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).astype(np.uint8)
Image.fromarray(img).save(sys.argv[1], quality=90)
EOF
cat > "$WORK/post.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "image/jpeg"
local f = assert(io.open("$WORK/img.jpg", "rb"))
wrk.body = f:read("*a")
f:close()
EOF

descendants() { # pid -> pid and all its descendants
  local c
  echo "$1"
  for c in $(pgrep -P "$1" || true); do descendants "$c"; done
}

# Resident memory (MiB) of a process and all its descendants.
rss_mb() {
  local total=0 p
  for p in $(descendants "$1"); do
    local kb
    kb=$(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)
    total=$((total + ${kb:-0}))
  done
  echo $((total / 1024))
}

to_ms() { # wrk latency ("250.12ms", "1.10s", "980.00us") -> ms
  awk -v v="$1" 'BEGIN { n = v + 0; if (v ~ /us$/) n /= 1000; else if (v ~ /ms$/) n = n; else if (v ~ /s$/) n *= 1000; printf "%.1f", n }'
}

RESULTS=()
measure() { # name, readiness URL, command...
  local name="$1" ready="$2"; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >"$WORK/$name.log" 2>&1 &
  SERVER_PID=$!
  # Time to first answer: until a classify request succeeds.
  for _ in $(seq 1 1200); do
    if curl -sf -o /dev/null -H 'Content-Type: image/jpeg' --data-binary "@$WORK/img.jpg" \
        "http://127.0.0.1:$PORT/classify" 2>/dev/null; then break; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$name died:" >&2; tail -20 "$WORK/$name.log" >&2; exit 1; }
    sleep 0.05
  done
  t1=$(date +%s.%N)
  local startup
  startup=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.2f", b - a }')
  curl -sf -o /dev/null "$ready" || true
  for _ in $(seq 1 5); do
    curl -sf -o /dev/null -H 'Content-Type: image/jpeg' --data-binary "@$WORK/img.jpg" "http://127.0.0.1:$PORT/classify"
  done
  local rss_warm
  rss_warm=$(rss_mb "$SERVER_PID")
  echo "[bench] $name: wrk -c$CONNECTIONS -d${DURATION}s" >&2
  wrk -t1 -c"$CONNECTIONS" -d"${DURATION}s" --latency -s "$WORK/post.lua" "http://127.0.0.1:$PORT/classify" >"$WORK/$name.wrk"
  local rss_load rps p99 errors
  rss_load=$(rss_mb "$SERVER_PID")
  sleep 2
  local rss_idle
  rss_idle=$(rss_mb "$SERVER_PID")
  rps=$(awk '/^Requests\/sec/ {print $2}' "$WORK/$name.wrk")
  p99=$(to_ms "$(awk '$1 == "99%" {print $2}' "$WORK/$name.wrk")")
  errors=$(awk '/Non-2xx/ {print $NF}' "$WORK/$name.wrk")
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "[bench] $name exited during the load:" >&2; tail -20 "$WORK/$name.log" >&2; exit 1
  fi
  # Answers the full profile gave from its MobileNetV3 fallback (a missed deadline or a failed
  # Wide ResNet pass) are 200s too: counted from its metrics, so req/s never hides them.
  local fallbacks="-"
  if [[ "$name" == imgclass_* ]]; then
    fallbacks=$(curl -sf "http://127.0.0.1:$PORT/metrics" | awk '/^imgclass_fallbacks_total/ { s += $NF } END { print s + 0 }') || fallbacks="?"
  fi
  # shellcheck disable=SC2046 # one pid per word
  kill $(descendants "$SERVER_PID") 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; SERVER_PID=""
  sleep 1
  RESULTS+=("$ROUND $name $rps $p99 $startup $rss_warm $rss_load $rss_idle ${errors:-0} $fallbacks")
  echo "[bench] $name: $rps req/s, p99 $p99 ms, start ${startup}s, RSS $rss_warm / $rss_load / $rss_idle MiB, non-2xx ${errors:-0}, fallbacks $fallbacks" >&2
}

baseline() { # model
  env MODEL="$1" TORCH_THREADS="$THREADS" OMP_NUM_THREADS="$THREADS" \
    "$VENV_BIN/gunicorn" -w 1 -k uvicorn.workers.UvicornWorker --chdir "$HERE" baseline_app:app \
    --bind "127.0.0.1:$PORT" --timeout 120
}

ONLY="${ONLY:-fastapi_mobilenet,imgclass_lite,fastapi_wrn,imgclass_full}"
ROUNDS="${ROUNDS:-1}"
want() { [[ ",$ONLY," == *",$1,"* ]]; }
run_one() { # server name
  case "$1" in
    fastapi_mobilenet) measure fastapi_mobilenet "http://127.0.0.1:$PORT/healthz" baseline mobilenet_v3_large ;;
    imgclass_lite) measure imgclass_lite "http://127.0.0.1:$PORT/readyz" \
      env RAYON_NUM_THREADS="$THREADS" "$BIN" serve --profile lite --addr "127.0.0.1:$PORT" --weights-dir "$WORK" --threads "$THREADS" ;;
    fastapi_wrn) measure fastapi_wrn "http://127.0.0.1:$PORT/healthz" baseline wide_resnet50_2 ;;
    imgclass_full) measure imgclass_full "http://127.0.0.1:$PORT/readyz" \
      env RAYON_NUM_THREADS="$THREADS" "$BIN" serve --profile full --addr "127.0.0.1:$PORT" --weights-dir "$WORK" --threads "$THREADS" ;;
  esac
}
for ROUND in $(seq 1 "$ROUNDS"); do
  if (( ROUND % 2 == 1 )); then
    order=(fastapi_mobilenet imgclass_lite fastapi_wrn imgclass_full)
  else
    order=(imgclass_lite fastapi_mobilenet imgclass_full fastapi_wrn)
  fi
  for name in "${order[@]}"; do
    if want "$name"; then
      [[ "$ROUNDS" -gt 1 ]] && echo "[bench] round $ROUND/$ROUNDS" >&2
      run_one "$name"
    fi
  done
done

echo
echo "Machine: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo), $(nproc) CPUs; wrk -c$CONNECTIONS -d${DURATION}s, 640x480 JPEG, $ROUNDS round(s)"
echo
echo "| round | server | req/s | p99 ms | start to first answer s | RSS warm MiB | RSS right after load MiB | RSS 2 s later MiB | non-2xx | fallbacks |"
echo "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"
declare -A RPS P99
for r in "${RESULTS[@]}"; do
  read -r round name rps p99 st rw rl ri err fb <<<"$r"
  RPS[$round.$name]=$rps; P99[$round.$name]=$p99
  echo "| $round | $name | $rps | $p99 | $st | $rw | $rl | $ri | $err | $fb |"
done
echo
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.2f", a / b; else print "n/a" }'; }
median() { tr ' ' '\n' | awk '$1 != "" && $1 != "n/a"' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "n/a"; else if (NR % 2) print v[(NR + 1) / 2]; else printf "%.2f", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
compare() { # label, imgclass server, baseline server, goal
  local rr=() pr=() round
  for round in $(seq 1 "$ROUNDS"); do
    rr+=("$(ratio "${RPS[$round.$2]:-0}" "${RPS[$round.$3]:-0}")")
    pr+=("$(ratio "${P99[$round.$2]:-0}" "${P99[$round.$3]:-0}")")
  done
  local line
  line="$1: $(echo "${rr[*]}" | median)x req/s (goal >= $4x), p99 $(echo "${pr[*]}" | median)x"
  [[ "$ROUNDS" -gt 1 ]] && line+="  (median of rounds; req/s ratios ${rr[*]}, p99 ratios ${pr[*]})"
  echo "$line"
}
compare "lite vs FastAPI MobileNet" imgclass_lite fastapi_mobilenet 5
compare "full vs FastAPI Wide ResNet" imgclass_full fastapi_wrn 2
