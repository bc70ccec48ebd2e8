#!/bin/sh
# test/mpi_ranks.sh MPIRUN TEST_MPI_RANKS — the Checkpointer on MPI ranks,
# step by step (test/test_mpi_ranks.cpp): a checkpoint saved by 3 ranks,
# loaded by 2, by 4 and by one plain process; plan caching; a rank that
# throws; DCP's example planners; cross-dtype loads and the strict refusal;
# a rank that dies (mpirun must exit non-zero in time); the
# MPI_THREAD_MULTIPLE check. Every step runs under a time limit.
set -u

me=mpi_ranks
fail() {
  echo "$me: FAIL: $*" >&2
  exit 1
}
[ $# -eq 2 ] || [ $# -eq 3 ] || fail "usage: $0 MPIRUN TEST_MPI_RANKS [RINGCKPT]"
mpirun=$1
exe=$2
tool=${3:-}
dir=$(mktemp -d /var/tmp/mpi_ranks.XXXXXX) || fail "no scratch directory"
trap 'rm -rf "$dir"' EXIT

# run LIMIT_S N CASE: CASE on N ranks (N=0: one process without mpirun).
run() {
  limit=$1 n=$2 case=$3
  echo "$me: $case on $n ranks"
  if [ "$n" -eq 0 ]; then
    timeout "$limit" "$exe" --run_test="$case" -- "$dir"
  else
    timeout "$limit" "$mpirun" -n "$n" --oversubscribe --allow-run-as-root \
      --mca btl self,vader "$exe" --run_test="$case" -- "$dir"
  fi
}

export OMPI_MCA_rmaps_base_oversubscribe=1
run 120 3 save_by_three || fail "save by 3 ranks"
run 120 2 load_own_part || fail "load by 2 ranks"
run 120 4 load_own_part || fail "load by 4 ranks"
run 120 0 load_whole || fail "load by one process"
run 120 3 plan_caching || fail "plan caching on 3 ranks"
run 120 3 one_rank_throws || fail "a rank that throws"
run 120 3 example_planners || fail "DCP's example planners on 3 ranks"
run 120 3 dtype_casts || fail "cross-dtype loads on 3 ranks"
RINGCKPT_TEST_MPI_FUNNELED=1 run 60 2 needs_thread_multiple || fail "the MPI_THREAD_MULTIPLE check"

# `ringckpt bench --ranks N` under mpirun: one JSON document, from rank 0.
if [ -n "$tool" ]; then
  echo "$me: ringckpt bench --ranks 2"
  out=$(timeout 300 "$mpirun" -n 2 --oversubscribe --allow-run-as-root --mca btl self,vader \
    "$tool" bench --ranks 2 --size 16MiB --repeat 1 --json --dir "$dir/bench" 2>/dev/null) ||
    fail "bench --ranks 2 exited non-zero"
  [ "$(printf '%s\n' "$out" | grep -c '"phases"')" -eq 1 ] || fail "bench --ranks 2 printed not one document: $out"
  printf '%s' "$out" | grep -q '"ringckpt-sync"' || fail "bench --ranks 2 has no ringckpt-sync phase"
  printf '%s' "$out" | grep -q '"ok":true' || fail "bench --ranks 2 did not verify: $out"
  [ -z "$(ls -A "$dir/bench" 2>/dev/null)" ] || fail "bench --ranks 2 left files: $(ls -R "$dir/bench")"
  # --device-only sizes the model as the saves make it.
  bytes='"model_bytes":[0-9]*,"tensors":[0-9]*'
  want=$(printf '%s' "$out" | grep -o "$bytes")
  # --device-only: the device phase alone, no checkpoint left or loaded.
  echo "$me: ringckpt bench --ranks 2 --device-only"
  out=$(timeout 120 "$mpirun" -n 2 --oversubscribe --allow-run-as-root --mca btl self,vader \
    "$tool" bench --ranks 2 --device-only --size 16MiB --repeat 2 --json --dir "$dir/device" \
    2>/dev/null) || fail "bench --ranks 2 --device-only exited non-zero"
  printf '%s' "$out" | grep -q '"device":{' || fail "bench --device-only has no device phase: $out"
  printf '%s' "$out" | grep -q '"ringckpt-sync"' && fail "bench --device-only saved: $out"
  printf '%s' "$out" | grep -q '"load_matches":null' || fail "bench --device-only claims a load: $out"
  got=$(printf '%s' "$out" | grep -o "$bytes")
  [ -n "$want" ] && [ "$got" = "$want" ] || fail "bench --device-only sized the model $got, not $want"
  [ -z "$(ls -A "$dir/device" 2>/dev/null)" ] || fail "bench --device-only left files: $(ls -R "$dir/device")"
  # --device-only --keep: the last run's files stay, one a rank.
  timeout 120 "$mpirun" -n 2 --oversubscribe --allow-run-as-root --mca btl self,vader \
    "$tool" bench --ranks 2 --device-only --keep --size 16MiB --repeat 1 --json \
    --dir "$dir/device-kept" >/dev/null 2>&1 || fail "bench --device-only --keep exited non-zero"
  [ -f "$dir/device-kept/bench-device/rank-0.bin" ] && [ -f "$dir/device-kept/bench-device/rank-1.bin" ] ||
    fail "bench --device-only --keep did not keep its files: $(ls -R "$dir/device-kept")"
  timeout 120 "$mpirun" -n 2 --oversubscribe --allow-run-as-root --mca btl self,vader \
    "$tool" bench --ranks 3 --size 16MiB --repeat 1 --dir "$dir/bench3" >/dev/null 2>&1
  [ $? -eq 2 ] || fail "bench --ranks 3 under mpirun -n 2 was not refused"
  # A --dir rank 0 refuses (one of the bench's folders is there already):
  # every rank ends, usage error, within the limit, and says why.
  mkdir -p "$dir/taken/bench-sync"
  err=$(timeout 60 "$mpirun" -n 2 --oversubscribe --allow-run-as-root --mca btl self,vader \
    "$tool" bench --ranks 2 --size 16MiB --repeat 1 --dir "$dir/taken" 2>&1 >/dev/null)
  rc=$?
  [ "$rc" -ne 124 ] || fail "bench --ranks 2 hung when rank 0 refused --dir"
  [ "$rc" -eq 2 ] || fail "bench --ranks 2 with a taken --dir exited $rc, not 2: $err"
  printf '%s' "$err" | grep -q "already exists" || fail "bench --ranks 2 did not say why: $err"
fi

start=$(date +%s)
run 60 3 one_rank_dies
rc=$?
took=$(( $(date +%s) - start ))
[ "$rc" -ne 0 ] || fail "mpirun exited 0 with a dead rank"
# timeout exits 124 when it stops mpirun; mpirun itself exits 128+9 when a
# rank was killed.
[ "$rc" -ne 124 ] && [ "$took" -lt 60 ] || fail "mpirun still ran after 60 s with a dead rank"
[ -e "$dir/died/metadata.json" ] && fail "a save with a dead rank left metadata.json"
echo "$me: a dead rank ended the job in ${took} s (mpirun exit $rc)"
echo "$me: PASS"
