"""Regenerate the README's picture (`make docs`): the sample network that died.

Scans ``textbook_dying.pt`` exactly as ``relu-doctor scan`` does by default (8 seeded
synthetic batches of 32, eval mode, CPU) and writes ``docs/images/textbook_dying.png``.
The sample models come from ``sample_models/make_samples.py`` (``make samples``); pass
another folder that holds them as the first argument. Needs the plots extra (matplotlib).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import relu_doctor  # noqa: E402
from relu_doctor.load import load_model  # noqa: E402
from relu_doctor.output.plots import report_figure, save_figure  # noqa: E402

OUT = ROOT / "docs" / "images" / "textbook_dying.png"
MAX_BYTES = 100_000  # a README picture stays small


def main(argv: list[str]) -> int:
    samples = Path(argv[1]) if len(argv) > 1 else ROOT / "sample_models"
    model = samples / "textbook_dying.pt"
    if not model.exists():
        print(f"{model} is missing: run `make samples` first", file=sys.stderr)
        return 2
    report = relu_doctor.scan(load_model(str(model)), name=model.name, device="cpu")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_figure(report_figure(report), OUT)
    size = OUT.stat().st_size
    dead = f"{report.dead_units} of {report.total_units} units dead"
    print(f"{OUT.relative_to(ROOT)}: {size // 1024} KiB, {dead}")
    if size > MAX_BYTES:
        print(f"{OUT.name} is over {MAX_BYTES // 1000} kB: make it smaller", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
