#!/usr/bin/env bash
# The GPU check (`make gpu-check`): a short elastic job with the model on one CUDA device.
# 1. one node, collectives on nccl: the built-in job trains on the GPU to the same loss as
#    alone on the GPU (same steps, same batches);
# 2. three nodes sharing the one GPU (nccl allows one rank per device, so the collectives run
#    on gloo, which all-reduces CUDA tensors): random churn, replicas identical after every
#    join (state captured from the GPU, moved through the sidecars, loaded onto the GPU), every
#    sample exactly once.
# Prints what it verified; without a CUDA device it says so and exits 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=.venv/bin
if ! $BIN/python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu-check: no CUDA device here; nothing verified"
  exit 0
fi
OUT=${OUT:-out/gpu-check}
rm -rf "$OUT" && mkdir -p "$OUT"
$BIN/python -c "import torch; print('gpu-check:', torch.cuda.get_device_name(0), 'torch', torch.__version__)"
CHAOS_STEPS=60 CHAOS_EVENT_LOG="$OUT/alone.jsonl" $BIN/python examples/train/mlp.py --device cuda > "$OUT/alone.out"
CHAOS_BACKEND=nccl $BIN/chaos-train run --new-group --node-id gpu0 --event-log "$OUT/nccl.jsonl" --steps 60 \
  examples/train/mlp.py --device cuda > "$OUT/nccl.out"
$BIN/python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def last(path, kind):
    return [json.loads(l) for l in open(path) if json.loads(l)["type"] == kind][-1]
alone, nccl = last(f"{out}/alone.jsonl", "step"), last(f"{out}/nccl.jsonl", "step")
assert alone["step"] == nccl["step"] == 60, (alone, nccl)
assert abs(alone["loss"] - nccl["loss"]) <= 1e-4 * abs(alone["loss"]), (alone, nccl)
print(f"gpu-check: 1 node on nccl, model on cuda: 60 steps, loss {nccl['loss']} (alone on cuda {alone['loss']})")
PY
CHAOS_BACKEND=gloo $BIN/chaos-train local --nodes 3 --steps 150 --churn random:1 --out "$OUT/churn" \
  --script examples/train/mlp.py --script-args "--device cuda" > "$OUT/churn.out"
$BIN/python - "$OUT/churn/summary.json" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
assert s["ok"] and s["replicas_identical"] and s["sample_accounting"] == "ids", s
joins = [e for e in s["events"] if e["kind"] == "join" and e["transfer_ms"]]
print(f"gpu-check: 3 nodes on one GPU (gloo collectives on cuda tensors), {len(s['events'])} churn events, "
      f"{len(joins)} joins with a state transfer, replicas identical ({s['replica_comparisons']} comparisons), "
      f"samples lost {s['samples_lost']} duplicated {s['samples_duplicated']} of {s['samples_expected']}")
PY
