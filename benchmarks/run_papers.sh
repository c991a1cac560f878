#!/usr/bin/env bash
# Runs the shipped paper re-runs one after the other (each grid uses both cores), with
# results in benchmarks/results/<name>/ and a log beside them. Re-running resumes.
#   bash benchmarks/run_papers.sh [config names...]
set -u
cd "$(dirname "$0")/.."
names=("${@:-lee-asahi-bulk lee-asahi-dielectric hoffmann-pbe-hse lee-asahi-bandgap perovskites}")
for name in ${names[@]}; do
  mkdir -p "benchmarks/results/$name"
  echo "== $name $(date -u +%FT%TZ)" >> "benchmarks/results/$name/run.log"
  /usr/bin/time -v python3 -m tlmat.cli benchmark "benchmarks/configs/$name.yaml" \
    --results "benchmarks/results/$name" --cache-dir .tlmat-cache \
    >> "benchmarks/results/$name/run.log" 2>&1
done
