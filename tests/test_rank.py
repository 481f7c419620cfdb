"""Effective rank (docs/metrics.md) on the row sample, the sample itself (uniform, seeded,
real rows, exact merges) and the memory it takes over a long scan."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import relu_doctor
from relu_doctor.analyze.rank import effective_rank
from relu_doctor.scanner.reservoir import SAMPLE_ROWS, Reservoir, bottom_k, merge_samples
from tests.fixtures.models import ConvNet, positive_inputs


def svd_rank(rows: np.ndarray) -> float:
    """Plain torch: exp(entropy of the singular values normalised to sum 1)."""
    s = torch.linalg.svdvals(torch.from_numpy(rows).double())
    p = s[s > 0] / s.sum()
    return float(torch.exp(-(p * p.log()).sum())) if p.numel() else 0.0


def mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def features(model: nn.Sequential, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return torch.relu(model[0](x)).numpy()


def test_eff_rank_matches_svdvals_on_the_same_sample() -> None:
    report = relu_doctor.scan(ConvNet(), positive_inputs(48, *ConvNet.IN), batch_size=16)
    for site in report.sites:
        assert site.totals is not None and site.totals.sample_rows is not None
        rows = site.totals.sample_rows
        assert rows.shape == (48, site.units)
        assert site.eff_rank == pytest.approx(svd_rank(rows), rel=1e-9)
        assert site.eff_rank_fraction == pytest.approx(site.eff_rank / site.units, rel=1e-12)


def test_a_scan_within_the_sample_size_keeps_every_row() -> None:
    model, x = mlp(), torch.randn(200, 8, generator=torch.Generator().manual_seed(1))
    site = relu_doctor.scan(model, x, batch_size=32).site("1")
    assert site.totals is not None and site.totals.sample_rows is not None
    feats = features(model, x)
    got = site.totals.sample_rows
    assert sorted(map(tuple, got)) == sorted(map(tuple, feats))
    assert site.eff_rank == pytest.approx(svd_rank(feats), rel=1e-9)


def test_a_long_scan_keeps_1024_distinct_real_rows_drawn_by_its_seed() -> None:
    model = mlp()
    x = torch.randn(40 * 64, 8, generator=torch.Generator().manual_seed(2))
    feats = features(model, x)
    index = {tuple(r): i for i, r in enumerate(feats)}
    torch_rng, numpy_rng = torch.random.get_rng_state(), np.random.get_state()

    def sample(seed: int) -> np.ndarray:
        totals = relu_doctor.scan(model, x, batch_size=64, seed=seed).site("1").totals
        assert totals is not None and totals.sample_rows is not None
        return totals.sample_rows

    a, again, other = sample(0), sample(0), sample(1)
    assert torch.equal(torch.random.get_rng_state(), torch_rng)
    assert np.random.get_state()[1].tolist() == numpy_rng[1].tolist()
    assert a.shape == (SAMPLE_ROWS, 16)
    picked = [index[tuple(r)] for r in a]  # KeyError: a row that is no sample's row
    assert len(set(picked)) == SAMPLE_ROWS
    assert 0.4 < np.mean(picked) / len(feats) < 0.6  # from the whole scan, not its start
    np.testing.assert_array_equal(a, again)
    assert {tuple(r) for r in a} != {tuple(r) for r in other}


def test_a_conv_row_is_one_position_of_one_sample() -> None:
    model, x = ConvNet().eval(), positive_inputs(24, *ConvNet.IN)
    site = relu_doctor.scan(model, x, batch_size=8).site("act1")
    assert site.totals is not None and site.totals.sample_rows is not None
    with torch.no_grad():
        h = model.act1(model.bn1(model.conv1(x)))  # (N, C, H, W)
    vectors = h.permute(0, 2, 3, 1).reshape(24, -1, h.shape[1]).numpy()  # (N, H*W, C)
    owners = []
    for row in site.totals.sample_rows:
        owners += [n for n in range(24) if any(np.array_equal(row, v) for v in vectors[n])]
    assert sorted(owners) == list(range(24))  # every sample once, each at one of its pixels


def test_a_dead_site_has_rank_zero() -> None:
    assert effective_rank(np.zeros((10, 4), dtype=np.float32)) == 0.0
    assert effective_rank(np.ones((10, 4), dtype=np.float32)) == pytest.approx(1.0)
    assert effective_rank(np.eye(4, dtype=np.float32)) == pytest.approx(4.0)
    assert effective_rank(None) is None


class ScriptedKeys:
    """Stands in for the site's generator: hands out fixed keys, position 0."""

    def __init__(self, keys: list[float]) -> None:
        self.keys = list(keys)

    def random(self, n: int) -> np.ndarray:
        out, self.keys = self.keys[:n], self.keys[n:]
        return np.array(out)

    def integers(self, high: int, size: int) -> np.ndarray:
        return np.zeros(size, dtype=np.int64)


def run(batches: list[torch.Tensor], keys: list[float], capacity: int) -> Reservoir:
    r = Reservoir(1, 1, torch.device("cpu"), ScriptedKeys(keys), capacity)  # type: ignore[arg-type]
    for b in batches:
        r.observe(b)
    return r


def test_merging_two_samples_equals_sampling_the_combined_stream() -> None:
    """With the same keys per row, the merge of the samples of A and B is the sample of A+B."""
    rng = np.random.default_rng(0)
    rows = torch.arange(60, dtype=torch.float32).reshape(60, 1)
    keys = rng.random(60).tolist()
    a = run([rows[:20], rows[20:35]], keys[:35], 8)
    b = run([rows[35:]], keys[35:], 8)
    joint = run([rows[:20], rows[20:35], rows[35:]], keys, 8)
    merged = merge_samples(a.result(), b.result(), 8)
    assert merged is not None
    joint_keys, joint_rows = bottom_k(joint.result()[1], joint.result()[0], 8)
    np.testing.assert_array_equal(np.sort(merged[1]), np.sort(joint_keys))
    assert sorted(merged[0].ravel()) == sorted(joint_rows.ravel())
    assert sorted(joint_rows.ravel()) == sorted(np.argsort(keys)[:8])  # the 8 smallest keys


def test_every_row_is_equally_likely_to_be_kept() -> None:
    """Capacity 4 of 20 rows in 5 batches: each row is kept with probability 1/5."""
    rows = torch.arange(20, dtype=torch.float32).reshape(20, 1)
    counts = np.zeros(20)
    trials = 3000
    for t in range(trials):
        r = Reservoir(1, 1, torch.device("cpu"), np.random.default_rng(t), 4)
        for i in range(0, 20, 4):
            r.observe(rows[i : i + 4])
        counts[r.result()[0].ravel().astype(int)] += 1
    share = counts / trials
    assert np.all(np.abs(share - 0.2) < 0.035), share  # 4.8 binomial standard deviations


MEMORY_SCRIPT = textwrap.dedent(
    """
    import sys
    import torch
    from torch import nn
    import relu_doctor

    leak = sys.argv[1] == "leak"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 4))
    kept = []
    if leak:  # what storing activations would cost: the control
        model[1].register_forward_hook(lambda m, i, o: kept.append(o.detach().clone()))
    peaks = {}

    def batches():
        g = torch.Generator().manual_seed(0)
        for _ in range(100):
            yield torch.randn(64, 64, generator=g)

    def progress(done, total):
        if done in (20, 100):  # the peak RSS of this process so far, in KiB
            status = open("/proc/self/status").read().split("VmHWM:")[1]
            peaks[done] = int(status.split()[0])
    relu_doctor.scan(model, batches(), batch_size=64, progress=progress)
    print(peaks[20], peaks[100])
    """
)


def peak_growth_mib(tmp_path: Path, mode: str) -> float:
    script = tmp_path / "memory.py"
    script.write_text(MEMORY_SCRIPT)
    root = Path(__file__).parents[1]
    done = subprocess.run(
        [sys.executable, str(script), mode],
        capture_output=True,
        text=True,
        check=False,
        cwd=root,
        env={"PYTHONPATH": str(root), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    at20, at100 = (int(v) for v in done.stdout.split())
    return (at100 - at20) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads Linux's VmHWM")
def test_memory_stays_flat_over_100_batches(tmp_path: Path) -> None:
    """Peak RSS after 100 batches of 64 x 4096 activations (1 MiB each) against after 20: the
    statistics and the 1024-row sample (16 MiB, full after 16 batches) do not grow; keeping
    the activations, as the control does, would add 80 MiB. (VmHWM, not ``ru_maxrss``:
    a child inherits its parent's ``ru_maxrss``, so a big pytest process would hide any
    growth.)"""
    scan, leak = peak_growth_mib(tmp_path, "scan"), peak_growth_mib(tmp_path, "leak")
    assert scan < 8 and leak > 60, (scan, leak)
