#!/bin/sh
# Runs `ringckpt demo` and `dd ... oflag=direct` (1 GiB) alternately N times
# on the same directory and prints the median save, load and dd rates.
#   bench/demo_vs_dd.sh [RINGCKPT_BIN] [DIR] [N]
set -eu
bin=${1:-build/tools/ringckpt}
dir=${2:-/var/tmp}
n=${3:-5}
tmp=$(mktemp -d "$dir/ringckpt-demo-vs-dd.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

rate() {  # "<bytes> MiB in <ms> ms" -> GB/s
  awk '{ for (i = 1; i <= NF; i++) if ($i == "in") { mib = $(i - 2); ms = $(i + 1) } }
       END { printf "%.3f\n", mib * 1048576 / (ms / 1000) / 1e9 }'
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

: > "$tmp/save"; : > "$tmp/load"; : > "$tmp/dd"
i=0
while [ "$i" -lt "$n" ]; do
  "$bin" demo --dir "$tmp/ckpt" > "$tmp/out"
  grep -E '^  save ' "$tmp/out" | rate >> "$tmp/save"
  grep -E '^  load ' "$tmp/out" | rate >> "$tmp/load"
  dd if=/dev/zero of="$tmp/dd.bin" bs=4M count=256 oflag=direct 2>&1 |
    awk '/copied/ { for (i = 1; i <= NF; i++) if ($i == "s,") { printf "%.3f\n", 1073741824 / $(i - 1) / 1e9 } }' >> "$tmp/dd"
  rm -f "$tmp/dd.bin"
  i=$((i + 1))
done
echo "runs: $n on $(df -T "$dir" | awk 'NR == 2 { print $2 }') ($dir), $(nproc) CPUs"
echo "ringckpt demo save  median $(median < "$tmp/save") GB/s  ($(tr '\n' ' ' < "$tmp/save"))"
echo "ringckpt demo load  median $(median < "$tmp/load") GB/s  ($(tr '\n' ' ' < "$tmp/load"))"
echo "dd bs=4M oflag=direct median $(median < "$tmp/dd") GB/s  ($(tr '\n' ' ' < "$tmp/dd"))"
