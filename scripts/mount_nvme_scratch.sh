#!/usr/bin/env bash
# Node-local scratch for r1v_ray (R1V_SCRATCH_DIR): the instance-store NVMe drives striped into one
# RAID0 volume at /mnt/nvme (p4d.24xlarge: 8 x 1 TB), else a folder on the root volume. Idempotent:
# cluster.yaml runs it in setup_commands on every node. EBS volumes are NVMe devices too on Nitro
# instances, so drives are chosen by their model name, never by device name.
set -euo pipefail
MOUNT=/mnt/nvme
if ! mountpoint -q "$MOUNT"; then
  mapfile -t DEVS < <(lsblk -dpno NAME,MODEL | awk '/Instance Storage/ {print $1}')
  if [ "${#DEVS[@]}" -gt 1 ]; then
    sudo mdadm --create /dev/md0 --run --level=0 --raid-devices="${#DEVS[@]}" "${DEVS[@]}"
    sudo mkfs.ext4 -q -F /dev/md0 && sudo mkdir -p "$MOUNT" && sudo mount /dev/md0 "$MOUNT"
  elif [ "${#DEVS[@]}" -eq 1 ]; then
    sudo mkfs.ext4 -q -F "${DEVS[0]}" && sudo mkdir -p "$MOUNT" && sudo mount "${DEVS[0]}" "$MOUNT"
  else
    sudo mkdir -p "$MOUNT"  # no instance store (the head): scratch on the root volume
  fi
fi
sudo mkdir -p "$MOUNT/r1v_scratch" && sudo chown "$(id -u):$(id -g)" "$MOUNT/r1v_scratch"
