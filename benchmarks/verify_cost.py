"""What checking a checkpoint's CRC-32s costs next to torch.load (issue 15, item 2).

Saves a ResNet-50-size state dict (25.6 M float32 parameters, ~102 MB, in 161 tensors: a few
big, many small) to a temporary folder, then times, fastest of --reps each and interleaved:

- verify: `relu_doctor.load.verify.verify_zip` (one streaming pass, zlib.crc32);
- torch.load: `torch.load(path, weights_only=True)` (what loading costs anyway).

Both read from the page cache after the first pass (as a scan right after a save or copy
does); a cold read from disk adds the same I/O time to both, so the ratio printed is the
worst case. Usage: python benchmarks/verify_cost.py [--mb 102] [--reps 5]
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from relu_doctor.load.verify import verify_zip


def _state_dict(mb: float) -> dict[str, torch.Tensor]:
    total = int(mb * 1e6 / 4)  # float32
    gen = torch.Generator().manual_seed(0)
    sizes = [total // 4, total // 8, total // 8] + [total // 2 // 158] * 158
    return {f"layer{i}.weight": torch.randn(n, generator=gen) for i, n in enumerate(sizes)}


def _fastest(fn: Callable[[], object], reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        gc.collect()
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=102.0, help="checkpoint size in MB")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "resnet50_size.pt"
        torch.save(_state_dict(args.mb), path)
        size = path.stat().st_size / 1e6
        verify_zip(path, path.name)  # warm the page cache for both sides
        check = _fastest(lambda: verify_zip(path, path.name), args.reps)
        load = _fastest(lambda: torch.load(path, weights_only=True), args.reps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, file {size:.1f} MB")
    print(f"verify      {check * 1e3:8.1f} ms  {size / check:8.0f} MB/s")
    print(f"torch.load  {load * 1e3:8.1f} ms  {size / load:8.0f} MB/s")
    print(f"verify / torch.load = {check / load:.2f}  (load with verify = {1 + check / load:.2f}x)")


if __name__ == "__main__":
    main()
