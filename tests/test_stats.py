"""Per-unit statistics on hand-made tensors whose answers are known by hand.

Each test feeds pre-activations through ``SiteAccumulator`` the way the capture does
(``observe_pre`` on the input, ``observe_out`` on the activation's output) and checks
``UnitTotals`` / ``unit_metrics`` / ``summarize`` against values worked out in the comments.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from relu_doctor.activations import by_name
from relu_doctor.analyze.metrics import Thresholds, UnitMetrics
from relu_doctor.analyze.metrics import unit_metrics as metrics_of
from relu_doctor.analyze.report import SiteReport
from relu_doctor.scanner.accumulate import SiteAccumulator, UnitTotals


def summarize(totals: UnitTotals, activation: str, th: Thresholds) -> SiteReport:
    """The report row of one site's totals (the public call a merged scan uses too)."""
    act = by_name(activation)
    assert act is not None
    return SiteReport.from_totals(totals, act, model="m", site="s", kind="k", thresholds=th)


def unit_metrics(totals: UnitTotals, activation: str, th: Thresholds) -> UnitMetrics:
    act = by_name(activation)
    assert act is not None
    return metrics_of(totals, act, th)


ACTIVATIONS = {
    "ReLU": torch.relu,
    "ReLU6": F.relu6,
    "LeakyReLU": lambda x: F.leaky_relu(x, 0.1),
}


def accumulate(
    batches: list[torch.Tensor],
    *,
    activation: str = "ReLU",
    unit_dim: int = 1,
    eps: float = 0.0,
    grads: list[torch.Tensor] = (),  # type: ignore[assignment]
    always_exact: bool = False,
) -> UnitTotals:
    units = batches[0].shape[unit_dim]
    acc = SiteAccumulator(
        units, unit_dim, torch.device("cpu"), relu_like=activation in ("ReLU", "ReLU6")
    )
    acc._nan_safe = always_exact  # what an accelerator does: no per-batch NaN check
    for pre in batches:
        acc.observe_pre(pre, eps)
        acc.observe_out(ACTIVATIONS[activation](pre), eps)
    for g in grads:
        acc.observe_grad(g)
    return acc.finalize()


def t(rows: list) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


# --- firing per sample ------------------------------------------------------------------


def test_linear_firing_per_sample_and_rate() -> None:
    pre = t(
        [
            # u0   u1    u2   u3
            [1.0, -1.0, 0.0, 2.0],
            [-1.0, -2.0, -3.0, 3.0],
            [-0.5, -1.0, -1.0, 0.5],
            [-2.0, -0.1, -4.0, 1.0],
        ]
    )
    s = accumulate([pre])
    assert s.samples == 4
    # u0 fires on sample 0 only; u1 never; u2 only reaches 0 (not > 0); u3 always.
    assert s.fires.tolist() == [1, 0, 0, 4]
    m = unit_metrics(s, "ReLU", Thresholds())
    np.testing.assert_allclose(m.firing_rate, [0.25, 0.0, 0.0, 1.0])
    assert m.dead.tolist() == [False, True, True, False]
    summary = summarize(s, "ReLU", Thresholds())
    assert (summary.units, summary.samples, summary.calls) == (4, 4, 1)
    assert summary.dead == 2
    assert summary.dead_fraction == 0.5


def test_conv_unit_fires_when_any_position_is_positive() -> None:
    # (N=2, C=3, H=2, W=2)
    pre = torch.full((2, 3, 2, 2), -1.0)
    pre[0, 0, 1, 1] = 0.2  # channel 0: one position of sample 0 -> fires on sample 0
    pre[1, 1] = 0.0  # channel 1: exactly zero everywhere on sample 1 -> never fires
    pre[:, 2, 0, 0] = 5.0  # channel 2: one position of every sample -> fires always
    s = accumulate([pre])
    assert s.units == 3
    assert s.samples == 2  # samples are batch rows, not spatial positions
    assert s.fires.tolist() == [1, 0, 2]
    summary = summarize(s, "ReLU", Thresholds())
    assert summary.dead == 1
    assert summary.dead_margin == 0.0  # channel 1's largest pre-activation
    # 24 output elements, 2 are > 0 (0.2 and 5.0 twice -> 3): sparsity 21/24
    assert summary.sparsity == pytest.approx(21 / 24)
    assert summary.max_activation == 5.0


def _sequence() -> torch.Tensor:
    # (N=2, T=3, F=2): feature 0 fires on sample 1 at t=2 only; feature 1 never fires.
    pre = torch.full((2, 3, 2), -1.0)
    pre[1, 2, 0] = 0.7
    pre[0, 1, 1] = -0.25
    return pre


def test_sequence_units_on_last_dim() -> None:
    s = accumulate([_sequence()], unit_dim=2)
    assert s.units == 2
    assert s.samples == 2
    assert s.fires.tolist() == [1, 0]
    assert s.max_pre.tolist() == [pytest.approx(0.7), -0.25]
    summary = summarize(s, "ReLU", Thresholds())
    assert summary.dead == 1
    assert summary.dead_margin == -0.25
    assert summary.sparsity == pytest.approx(11 / 12)


def test_sequence_units_with_negative_unit_dim() -> None:
    s = accumulate([_sequence()], unit_dim=-1)
    assert s.fires.tolist() == [1, 0]
    assert summarize(s, "ReLU", Thresholds()).dead == 1


# --- dead / near-dead / dormant ---------------------------------------------------------


def _rare_firing(n: int = 200) -> torch.Tensor:
    pre = torch.full((n, 4), -1.0)
    pre[:, 0] = 1.0  # always fires
    pre[0, 1] = 1.0  # fires on 1/200 = 0.005
    pre[:3, 2] = 1.0  # fires on 3/200 = 0.015
    return pre  # unit 3 never fires


def test_dead_is_exactly_zero_rate_and_near_dead_below_one_percent() -> None:
    s = accumulate([_rare_firing()])
    m = unit_metrics(s, "ReLU", Thresholds())
    np.testing.assert_allclose(m.firing_rate, [1.0, 0.005, 0.015, 0.0])
    assert m.dead.tolist() == [False, False, False, True]
    assert m.near_dead.tolist() == [False, True, False, False]  # dead is not near-dead
    summary = summarize(s, "ReLU", Thresholds())
    assert (summary.dead, summary.near_dead) == (1, 1)


def test_near_dead_threshold_is_configurable() -> None:
    s = accumulate([_rare_firing()])
    assert summarize(s, "ReLU", Thresholds(near_dead=0.02)).near_dead == 2
    assert summarize(s, "ReLU", Thresholds(near_dead=0.004)).near_dead == 0


def test_dormant_redo_score() -> None:
    # One sample, one position per unit: mean|h_j| = h_j.
    pre = t([[1.0, 1.0, 0.01, 0.03, -1.0]])
    s = accumulate([pre])
    m = unit_metrics(s, "ReLU", Thresholds())
    layer_mean = (1.0 + 1.0 + 0.01 + 0.03 + 0.0) / 5  # 0.408
    expected = np.array([1.0, 1.0, 0.01, 0.03, 0.0]) / layer_mean
    np.testing.assert_allclose(m.score, expected, rtol=1e-6)
    # 0.01/0.408 = 0.0245 <= 0.025: dormant; 0.03/0.408 = 0.0735: not; dead unit: score 0.
    assert m.dormant.tolist() == [False, False, True, False, True]
    assert summarize(s, "ReLU", Thresholds()).dormant == 2
    assert summarize(s, "ReLU", Thresholds(tau=0.1)).dormant == 3


def test_dormant_score_averages_over_samples_and_positions() -> None:
    # (N=2, C=2, L=2). Channel 0: |h| = 1, 3, 0, 0 -> mean 1. Channel 1: all 2 -> mean 2.
    pre = t([[[1.0, 3.0], [2.0, 2.0]], [[-1.0, -5.0], [2.0, 2.0]]])
    m = unit_metrics(accumulate([pre]), "ReLU", Thresholds())
    np.testing.assert_allclose(m.mean_abs, [1.0, 2.0])
    np.testing.assert_allclose(m.score, [1.0 / 1.5, 2.0 / 1.5])


# --- sparsity is not death --------------------------------------------------------------


def test_half_sparse_healthy_layer_has_no_dead_units() -> None:
    n, units = 10, 6
    signs = torch.tensor([1.0, -1.0]).repeat(n // 2)  # +, -, +, -, ...
    pre = signs[:, None] * torch.arange(1, units + 1, dtype=torch.float32)[None, :]
    pre[:, ::2] *= -1  # even units fire on odd samples, odd units on even samples
    s = accumulate([pre])
    summary = summarize(s, "ReLU", Thresholds())
    assert summary.sparsity == pytest.approx(0.5)
    assert summary.dead == 0
    assert summary.near_dead == 0
    np.testing.assert_allclose(unit_metrics(s, "ReLU", Thresholds()).sparsity, 0.5)


# --- max activation, margin -------------------------------------------------------------


def test_max_activation_is_the_largest_output() -> None:
    pre = t([[0.5, -2.0], [3.25, -1.0], [-7.0, -3.0]])
    s = accumulate([pre])
    m = unit_metrics(s, "ReLU", Thresholds())
    assert m.max_activation.tolist() == [3.25, 0.0]
    assert summarize(s, "ReLU", Thresholds()).max_activation == 3.25


def test_relu6_caps_max_activation_and_still_dies() -> None:
    pre = t([[10.0, -2.0, 4.0], [-1.0, -3.0, 5.5]])
    s = accumulate([pre], activation="ReLU6")
    m = unit_metrics(s, "ReLU6", Thresholds())
    assert m.max_activation.tolist() == [6.0, 0.0, 5.5]
    summary = summarize(s, "ReLU6", Thresholds())
    assert summary.max_activation == 6.0
    assert summary.dead == 1
    assert summary.dead_margin == -2.0


def test_leaky_relu_max_activation_and_never_positive_is_dead() -> None:
    pre = t([[2.0, -2.0], [-4.0, -1.0]])
    s = accumulate([pre], activation="LeakyReLU")
    m = unit_metrics(s, "LeakyReLU", Thresholds())
    np.testing.assert_allclose(m.max_activation, [2.0, -0.1])
    assert m.dead.tolist() == [False, True]
    # |h| for a leaky unit counts its negative side: unit 1 mean|h| = (0.2 + 0.1) / 2
    np.testing.assert_allclose(m.mean_abs, [(2.0 + 0.4) / 2, (0.2 + 0.1) / 2], rtol=1e-6)


def test_dead_margin_is_median_of_dead_units_max_pre_activation() -> None:
    pre = t(
        [
            [-3.0, -9.0, -1.0, 1.0],
            [-5.0, -1.0, -4.0, -2.0],
        ]
    )
    s = accumulate([pre])
    # dead units 0, 1, 2 with largest pre-activations -3, -1, -1 -> median -1
    assert s.max_pre.tolist() == [-3.0, -1.0, -1.0, 1.0]
    assert summarize(s, "ReLU", Thresholds()).dead_margin == -1.0
    # even number of dead units: median of -3 and -1 is -2
    assert summarize(accumulate([pre[:, [0, 1, 3]]]), "ReLU", Thresholds()).dead_margin == -2.0


def test_dead_margin_is_none_without_dead_units() -> None:
    summary = summarize(accumulate([t([[1.0, 0.5], [-1.0, -1.0]])]), "ReLU", Thresholds())
    assert summary.dead == 0
    assert summary.dead_margin is None


# --- eps --------------------------------------------------------------------------------


def test_eps_sets_the_firing_and_sparsity_threshold() -> None:
    eps = 0.5
    pre = t([[0.3, 0.6, -1.0], [0.5, -0.2, 0.2], [0.1, 2.0, 0.4]])
    s = accumulate([pre], eps=eps)
    # unit 0: 0.3, 0.5, 0.1 never > 0.5 -> dead although positive; unit 1: 2 of 3;
    # unit 2: never > 0.5 -> dead
    assert s.fires.tolist() == [0, 2, 0]
    summary = summarize(s, "ReLU", Thresholds(eps=eps))
    assert summary.dead == 2
    assert summary.dead_margin == pytest.approx(np.median([0.5, 0.4]))
    assert summary.sparsity == pytest.approx(7 / 9)  # only 0.6 and 2.0 are > eps
    # the same tensor with eps = 0: every unit fires
    assert summarize(accumulate([pre]), "ReLU", Thresholds()).dead == 0


# --- non-finite -------------------------------------------------------------------------


def test_a_unit_is_judged_on_its_finite_values() -> None:
    # Unit 0 sees NaN on sample 0 and -1 on sample 1: judged on the -1 alone it never fires,
    # so it is dead (not hidden by the NaN) and not nonfinite; its NaN is counted apart.
    pre = t([[math.nan, -1.0, 1.0], [-1.0, -1.0, 1.0]])
    s = accumulate([pre])
    assert s.nonfinite.tolist() == [1, 0, 0]
    m = unit_metrics(s, "ReLU", Thresholds())
    assert m.nonfinite.tolist() == [False, False, False]
    assert m.dead.tolist() == [True, True, False]
    summary = summarize(s, "ReLU", Thresholds())
    assert (summary.dead, summary.nonfinite) == (2, 0)
    assert summary.dead_margin == -1.0  # unit 0's largest *finite* pre-activation is -1
    assert s.max_pre.tolist() == [-1.0, -1.0, 1.0]
    assert summary.max_activation == 1.0  # NaN is not a maximum


def test_a_unit_with_no_finite_value_is_nonfinite_not_dead_nor_dormant() -> None:
    # Unit 0: NaN, +Inf (no finite value); unit 1: -1, -1 (dead); unit 2: 2, 4 (alive).
    pre = t([[math.nan, -1.0, 2.0], [math.inf, -1.0, 4.0]])
    s = accumulate([pre])
    assert s.nonfinite.tolist() == [2, 0, 0]
    m = unit_metrics(s, "ReLU", Thresholds())
    assert m.nonfinite.tolist() == [True, False, False]
    assert m.dead.tolist() == [False, True, False]
    assert m.dormant.tolist() == [False, True, False]
    assert math.isnan(m.firing_rate[0]) and math.isnan(m.score[0])
    assert math.isnan(m.sparsity[0]) and math.isnan(m.max_activation[0])
    summary = summarize(s, "ReLU", Thresholds())
    assert (summary.dead, summary.nonfinite, summary.dormant) == (1, 1, 1)
    # The dead fraction keeps nonfinite units in its denominator (docs/metrics.md).
    assert summary.dead_fraction == pytest.approx(1 / 3)
    # Sparsity over the 4 finite elements: unit 1's two zeros.
    assert summary.sparsity == pytest.approx(2 / 4)
    assert summary.max_activation == 4.0


def test_inf_outputs_are_left_out_and_never_fire() -> None:
    # +Inf is not a finite value: unit 0 is judged on its -1 and is dead.
    pre = t([[math.inf, 1.0], [-1.0, 1.0]])
    m = unit_metrics(accumulate([pre]), "ReLU", Thresholds())
    assert m.dead.tolist() == [True, False]
    assert m.nonfinite.tolist() == [False, False]


def test_the_dormant_score_averages_finite_outputs_only() -> None:
    # Unit 0: NaN, 4 -> mean over its one finite element = 4; unit 1: 2, 2 -> mean 2.
    # Layer mean = 3: scores 4/3 and 2/3 (a NaN counted as 0 would give 2 and 2).
    pre = t([[math.nan, 2.0], [4.0, 2.0]])
    m = unit_metrics(accumulate([pre]), "ReLU", Thresholds())
    np.testing.assert_allclose(m.mean_abs, [4.0, 2.0])
    np.testing.assert_allclose(m.score, [4 / 3, 2 / 3])
    assert m.sparsity.tolist() == [0.0, 0.0]


def test_nan_in_a_conv_channel_leaves_its_death_counted() -> None:
    pre = torch.full((2, 2, 3), -1.0)
    pre[1, 0, 2] = math.nan
    s = accumulate([pre])
    assert s.nonfinite.tolist() == [1, 0]
    summary = summarize(s, "ReLU", Thresholds())
    assert (summary.dead, summary.nonfinite, summary.dead_margin) == (2, 0, -1.0)


def test_a_nan_position_does_not_hide_a_firing_position_of_the_same_sample() -> None:
    # Channel 0 of sample 0 has NaN at one position and 3 at another: it fires once.
    pre = torch.full((2, 1, 3), -1.0)
    pre[0, 0, 0], pre[0, 0, 1] = math.nan, 3.0
    for activation, eps in (("ReLU", 0.0), ("ReLU", 0.5), ("LeakyReLU", 0.0)):
        s = accumulate([pre], activation=activation, eps=eps)
        assert s.fires.tolist() == [1], (activation, eps)
        assert s.max_pre.tolist() == [3.0], (activation, eps)


def test_a_nan_row_does_not_hide_dead_units() -> None:
    pre = t([[math.nan, math.nan, math.nan], [-1.0, 2.0, 3.0], [-2.0, 1.0, -1.0]])
    for activation, eps in (("ReLU", 0.0), ("ReLU6", 0.0), ("ReLU", 0.5), ("LeakyReLU", 0.0)):
        summary = summarize(
            accumulate([pre], activation=activation, eps=eps), activation, Thresholds(eps=eps)
        )
        assert (summary.dead, summary.nonfinite) == (1, 0), (activation, eps)
        assert summary.dead_margin == -1.0


def test_leaky_relu_largest_output_ignores_nan() -> None:
    # Unit 0's finite outputs are all negative: its largest output stays negative.
    pre = t([[math.nan, 1.0], [-1.0, 1.0]])
    m = unit_metrics(accumulate([pre], activation="LeakyReLU"), "LeakyReLU", Thresholds())
    np.testing.assert_allclose(m.max_activation, [-0.1, 1.0])


def test_large_half_precision_outputs_are_not_taken_for_inf() -> None:
    # 256 samples x 500 = 128000 > 65504, the largest float16: a float16 sum would overflow.
    pre = torch.full((256, 2), 500.0, dtype=torch.float16)
    pre[:, 1] = -1.0
    s = accumulate([pre])
    assert s.nonfinite.tolist() == [0, 0]
    assert s.abs_sum.tolist() == [128000.0, 0.0]
    summary = summarize(s, "ReLU", Thresholds())
    assert (summary.dead, summary.nonfinite) == (1, 0)


def test_half_precision_counts_are_exact() -> None:
    # 4096 positions per sample: float16 counts 2049 as 2048, bfloat16 257 as 256.
    for dtype in (torch.float16, torch.bfloat16):
        pre = -torch.ones(1, 1, 4096, dtype=dtype)
        pre[0, 0, :2049] = 1.0
        s = accumulate([pre])
        assert s.active.tolist() == [2049], dtype


@pytest.mark.parametrize("activation", ["ReLU", "ReLU6", "LeakyReLU"])
@pytest.mark.parametrize("eps", [0.0, 0.5])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_the_always_exact_path_of_accelerators_gives_the_same_totals(
    activation: str, eps: float, bad: float | None
) -> None:
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 5, generator=g) for _ in range(2)] + [torch.randn(6, 3)]
    batches[2] = batches[2][:, :, None].expand(6, 3, 5).contiguous()
    if bad is not None:
        batches[0][1, 0, 2] = bad
        batches[1][:, 2] = bad  # channel 2 has no finite value in batch 1
    fast = accumulate(batches, activation=activation, eps=eps)
    exact = accumulate(batches, activation=activation, eps=eps, always_exact=True)
    for name in ("fires", "active", "nonfinite", "max_pre", "abs_sum"):
        np.testing.assert_allclose(getattr(fast, name), getattr(exact, name), err_msg=name)
    if activation == "LeakyReLU":
        np.testing.assert_allclose(fast.max_out, exact.max_out)
    if bad is not None and math.isnan(bad):  # NaN stays NaN through every activation
        assert exact.nonfinite.tolist() == [1, 0, 4 * 5]


# --- gradients --------------------------------------------------------------------------


def test_grad_norm_is_the_mean_over_batches_of_each_batch_l2_norm() -> None:
    pre = t([[1.0, -1.0]])
    s = accumulate([pre, pre], grads=[t([[3.0, 4.0]]), t([[0.0, 1.0]])])
    assert s.grad_calls == 2
    assert summarize(s, "ReLU", Thresholds()).grad_norm == pytest.approx((5.0 + 1.0) / 2)
    assert summarize(accumulate([pre]), "ReLU", Thresholds()).grad_norm is None


# --- merging partial scans --------------------------------------------------------------


def _random_batches(seed: int, sizes: list[int], shape: tuple[int, ...]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in sizes:
        x = torch.randn(n, *shape, generator=g)
        x[:, 1] -= 10.0  # a dead channel
        x[:, 3] -= 2.5  # a rarely firing channel
        out.append(x)
    return out


@pytest.mark.parametrize("activation", ["ReLU", "ReLU6", "LeakyReLU"])
def test_merge_equals_scan_of_both(activation: str) -> None:
    a = _random_batches(0, [5, 3], (6, 4, 4))
    b = _random_batches(1, [7], (6, 4, 4))
    ga = [torch.randn(5, 6, 4, 4), torch.randn(3, 6, 4, 4)]
    gb = [torch.randn(7, 6, 4, 4)]
    sa = accumulate(a, activation=activation, grads=ga)
    sb = accumulate(b, activation=activation, grads=gb)
    both = accumulate(a + b, activation=activation, grads=ga + gb)
    merged = sa.merge(sb)

    for name in ("samples", "calls", "elements", "grad_calls"):
        assert getattr(merged, name) == getattr(both, name), name
    assert merged.samples == 15
    np.testing.assert_array_equal(merged.fires, both.fires)
    np.testing.assert_array_equal(merged.active, both.active)
    np.testing.assert_array_equal(merged.nonfinite, both.nonfinite)
    np.testing.assert_allclose(merged.max_pre, both.max_pre)
    np.testing.assert_allclose(merged.abs_sum, both.abs_sum, rtol=1e-6)
    assert merged.grad_norm_sum == pytest.approx(both.grad_norm_sum)
    if both.max_out is None:
        assert merged.max_out is None
    else:
        np.testing.assert_allclose(merged.max_out, both.max_out)

    th = Thresholds()
    sm, sb_ = summarize(merged, activation, th), summarize(both, activation, th)
    for name in ("units", "samples", "calls", "dead", "near_dead", "dormant", "nonfinite"):
        assert getattr(sm, name) == getattr(sb_, name), name
    for name in ("dead_fraction", "sparsity", "max_activation", "dead_margin", "grad_norm"):
        assert getattr(sm, name) == pytest.approx(getattr(sb_, name)), name
    assert sm.dead == 1

    # and against plain torch on the concatenated tensor
    x = torch.cat(a + b)
    fires = (x > 0).flatten(2).any(dim=2).sum(dim=0)
    np.testing.assert_array_equal(merged.fires, fires.numpy())
    np.testing.assert_allclose(merged.max_pre, x.amax(dim=(0, 2, 3)).double().numpy())


def test_merge_refuses_different_unit_counts() -> None:
    sa = accumulate([torch.randn(2, 3)])
    sb = accumulate([torch.randn(2, 4)])
    with pytest.raises(ValueError):
        sa.merge(sb)
