"""The bulk zoo grid with one seed (this session's budget); the shipped config has three."""

import logging
from pathlib import Path

from tlmat.experiments.benchmark import BenchmarkConfig, run_benchmark

logging.basicConfig(level=logging.INFO)
config = BenchmarkConfig.from_yaml("benchmarks/configs/model-zoo-bulk.yaml")
config = config.model_copy(update={"seeds": [0]})
print(run_benchmark(config, Path("benchmarks/results/model-zoo-bulk"), Path("/tmp/zoo-cache")))
