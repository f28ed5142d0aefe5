"""CPU benchmarks (`python bench/run.py`) and the CUDA benchmark (`python bench/gpu.py`)."""
