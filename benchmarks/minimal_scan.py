"""The least a script can do for what `relu-doctor scan CKPT --no-grad` does (the command
figure's baseline), with no statistics:

    python benchmarks/minimal_scan.py CKPT [--batch-size 32] [--batches 8] [--device cpu] -o OUT

import torch; ``torch.load(CKPT, weights_only=True)``; build the ``--arch`` model
(``benchmarks.workloads:resnet50``) and load the weights; one shape probe (2 samples under
``no_grad``, as the tool checks the input size it inferred from the first Conv2d:
3x32x32); the same seeded N(0, 1) batches as the tool's synthetic inputs (a CPU generator
seeded 0) under ``inference_mode``; a tiny JSON result written to OUT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from benchmarks.workloads import resnet50

SHAPE = (3, 32, 32)  # what relu-doctor infers for a first Conv2d with 3 input channels


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("ckpt")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    state = torch.load(args.ckpt, map_location=device, weights_only=True)
    model = resnet50()
    model.load_state_dict(state)
    model.to(device).eval()

    probe = torch.randn((2, *SHAPE), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(probe.to(device))

    g = torch.Generator().manual_seed(0)
    total = 0.0
    with torch.inference_mode():
        for _ in range(args.batches):
            x = torch.randn((args.batch_size, *SHAPE), generator=g).to(device)
            total += float(model(x).float().mean())
    result = {
        "model": Path(args.ckpt).name,
        "samples": args.batch_size * args.batches,
        "batches": args.batches,
        "mean_output": total / args.batches,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
