#!/usr/bin/env bash
# The second device call: studies/cifar10-quick.yaml on the full CIFAR-10 archive, on the machine the
# first call (make gpu-check) left warm with the wheels installed in /tmp/site (the 61 MiB of wheels and
# the 18.6 MB archive do not fit in one 64 MiB call). Carry: .carry-cifar (the archive, see README "Speed").
#   bash bench/gpu_quick.sh "$OUT"
set -euo pipefail
out=${1:?usage: gpu_quick.sh OUT_DIR}
[ -d /tmp/site/ray ] || { echo "no /tmp/site/ray: this machine is fresh; run the first call (make gpu-check) first" >&2; exit 3; }
export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
mkdir -p /tmp/cifar10 && tar -xJf .carry-cifar/cifar10-jpg.tar.xz -C /tmp/cifar10
start=$(date +%s)
python3 -m akd_ray.cli tune studies/cifar10-quick.yaml --set task.data_dir=/tmp/cifar10 --set storage=/tmp/akd-results \
    2>&1 | tee "$out/quick-study.log"
echo "whole study: $(( $(date +%s) - start )) s" | tee -a "$out/quick-study.log"
tar -czf "$out/quick-report.tgz" -C /tmp/akd-results/cifar10-quick report status.json
