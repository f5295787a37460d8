#!/bin/bash
# Device call 2: put the GPU ONNX Runtime together, install it in place of the image's CPU build
# (as 'pip uninstall onnxruntime && pip install .[serve-gpu]' would), probe it, run gpu-check,
# then the confluent client's GPU bench while time is left.
set -u
export PYTHONUNBUFFERED=1
P2=${P2:-.dev2}; PY=${PY:-python3}; OUT=${OUT:-/tmp/out}; GPUCHECK=${GPUCHECK:-scripts/gpu-check}; TB=${TB:-100}
mkdir -p "$OUT" /tmp/parts; t0=$(date +%s)
cp "$P2"/ort.part.* /tmp/parts/; ls -la /tmp/parts
cat /tmp/parts/ort.part.* > /tmp/ort.tar.xz
sha256sum /tmp/ort.tar.xz; grep -q "$(sha256sum < /tmp/ort.tar.xz | cut -c1-64)" "$P2"/ort.sha256 || { echo "assembled archive does not match"; exit 4; }
SITE=$("$PY" -c 'import site; print(site.getsitepackages()[0])')
"$PY" -m pip uninstall -y -q onnxruntime 2>&1 | tail -2
"$PY" -c "import sys, tarfile; tarfile.open('/tmp/ort.tar.xz').extractall(sys.argv[1])" "$SITE" || exit 5
echo "installed in $(( $(date +%s) - t0 )) s"
export PYTHONPATH="$PWD:/tmp/site"
probe() {
"$PY" - <<'PYEOF'
import onnxruntime as ort
print("ort", ort.__version__, ort.__file__, ort.get_available_providers())
from serving.runtime import preload_gpu_libraries, provider_loads
print("preload:", preload_gpu_libraries())
for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"):
    print(p, provider_loads(p))
if not provider_loads("CUDAExecutionProvider"):
    from stack.serve_bench import bench_cnn_onnx
    ort.set_default_logger_severity(2)
    try:
        s = ort.InferenceSession(bench_cnn_onnx(), providers=["CUDAExecutionProvider"])
        print("direct session:", s.get_providers())
    except Exception as e:
        print("direct session failed:", e)
PYEOF
}
probe 2>&1 | tail -n 40 | tee "$OUT/probe.txt"
if ! grep -q "^CUDAExecutionProvider True" "$OUT/probe.txt"; then
  export LD_LIBRARY_PATH=$(ls -d "$SITE"/nvidia/*/lib 2>/dev/null | paste -sd:)
  echo "== CUDA did not load through the preload; again with LD_LIBRARY_PATH=$LD_LIBRARY_PATH" | tee -a "$OUT/probe.txt"
  probe 2>&1 | tail -n 20 | tee -a "$OUT/probe.txt"
fi
s=$(date +%s)
$GPUCHECK > "$OUT/gpu-check.json" 2> "$OUT/gpu-check.err"
echo "gpu-check rc $? in $(( $(date +%s) - s )) s"; tail -n 1 "$OUT/gpu-check.json"; tail -n 25 "$OUT/gpu-check.err"
if [ $(( $(date +%s) - t0 )) -lt 250 ]; then
  s=$(date +%s)
  AUDITSTREAM_DEVICE=auto timeout "$TB" "$PY" -m auditstream.cli bench serve --json --no-tls --client confluent \
    --count 20000 --latency-count 3000 --workers 4 > "$OUT/gpu-confluent.json" 2> "$OUT/gpu-confluent.err"
  echo "bench confluent rc $? in $(( $(date +%s) - s )) s"; tail -n 1 "$OUT/gpu-confluent.json"; tail -n 4 "$OUT/gpu-confluent.err"
fi
echo "total $(( $(date +%s) - t0 )) s"
