"""The rules: one record each, registered in ``RULES``.

Codes are stable and never reused: a rule that is dropped moves its code to ``RETIRED``,
which the registry refuses forever (the pinned table in ``tests/test_rules.py`` keeps
everyone honest). Groups: ``RD1xx`` measured death, ``RD2xx`` comparison with a baseline
report, ``RD3xx`` numerics, ``RD4xx`` weights and structure.
"""

from __future__ import annotations

from collections.abc import Iterable

from relu_doctor.gate.registry import Reference, Rule, RuleRegistry, parse_codes
from relu_doctor.gate.weights import BN_K

__all__ = ["RETIRED", "RULES", "Reference", "Rule", "RuleRegistry", "parse_codes", "rules_markdown"]

#: Codes of rules that were removed; never registered again.
RETIRED: frozenset[str] = frozenset()

RULES = RuleRegistry(retired=RETIRED)

_LU = Reference(
    "Lu, Shin, Su, Karniadakis (2019). Dying ReLU and Initialization: Theory and Numerical "
    "Examples",
    "https://arxiv.org/abs/1903.06733",
)
_DOUGLAS = Reference(
    "Douglas, Yu (2018). Why ReLU Units Sometimes Die: Analysis of Single-Unit Error "
    "Backpropagation in Neural Networks",
    "https://arxiv.org/abs/1812.05981",
)
_REDO = Reference(
    "Sokar, Agarwal, Castro, Evci (2023). The Dormant Neuron Phenomenon in Deep "
    "Reinforcement Learning (ReDo)",
    "https://arxiv.org/abs/2302.12902",
)
_BN = Reference(
    "Ioffe, Szegedy (2015). Batch Normalization: Accelerating Deep Network Training by "
    "Reducing Internal Covariate Shift",
    "https://arxiv.org/abs/1502.03167",
)
_MEHTA = Reference(
    "Mehta, Kim, Theobalt (2019). Implicit Filter Sparsification in Convolutional Neural Networks",
    "https://arxiv.org/abs/1905.04967",
)

_ = RULES.register
_(
    Rule(
        code="RD101",
        name="dead-site",
        summary="A ReLU site has more dead units than max_layer_dead allows.",
        what_it_does=(
            "Flags each ReLU or ReLU6 site whose dead fraction (units that fired on no "
            "scanned sample, over the site's units) is above max_layer_dead, default 0.50. "
            "A fraction equal to the limit passes. Dead is measured on the scanned samples: "
            "with N samples, a unit that never fired fires on fewer than 3/N of inputs at "
            "95% confidence, so scan real data and enough batches for a strong claim."
        ),
        why=(
            "A dead unit outputs 0 for every input, so no gradient reaches its incoming "
            "weights and it never learns again: the layer has silently lost that share of "
            "its width. Dead units rarely come back, and there is no error or NaN to notice, "
            "which is why it needs a gate."
        ),
        fix=(
            "Re-initialise the dead units (ReDo) or swap the site to LeakyReLU, and retrain "
            "with a lower learning rate or a warm-up."
        ),
        references=(_LU, _DOUGLAS, _REDO),
        severity="error",
        scope="site",
        param="max_layer_dead",
        default=0.50,
    )
)
_(
    Rule(
        code="RD102",
        name="dead-model",
        summary="Too many of the model's ReLU units are dead.",
        what_it_does=(
            "Flags the model when its dead fraction (dead units over all units of its ReLU "
            "and ReLU6 sites) is above max_dead, default 0.10. A fraction equal to the limit "
            "passes. LeakyReLU, PReLU and ELU sites are listed by the scan but not counted."
        ),
        why=(
            "This is the share of the network's ReLU capacity that is gone. A few dead units "
            "are normal in a trained network; a tenth or more means the learning rate, the "
            "initialisation or the normalisation destroys capacity faster than the model "
            "uses it, and the fraction usually only grows with more training."
        ),
        fix=(
            "Find the worst sites in the table; lower the learning rate or add a warm-up, "
            "and re-initialise the dead units (ReDo) to recover the capacity."
        ),
        references=(_LU, _REDO),
        severity="error",
        scope="model",
        param="max_dead",
        default=0.10,
    )
)
_(
    Rule(
        code="RD103",
        name="near-dead-site",
        summary="A ReLU site has too many near-dead units.",
        what_it_does=(
            "Flags each ReLU or ReLU6 site whose near-dead share (units that fired on some "
            "but fewer than 1% of samples, the scan's near_dead threshold, over the site's "
            "units; dead units are not included) is above max_near_dead. Off unless "
            "max_near_dead is set."
        ),
        why=(
            "Near-dead units get gradient only on the rare samples where they fire, so they "
            "learn slowly and are the next to die: a growing near-dead share warns before "
            "the dead fraction moves. Some units are selective on purpose (rare features), "
            "so set the limit from a healthy checkpoint of your own model."
        ),
        fix=(
            "Treat it as an early warning: lower the learning rate or weight decay and watch "
            "the site across checkpoints before its units die."
        ),
        references=(_REDO, _DOUGLAS),
        severity="error",
        scope="site",
        param="max_near_dead",
        default=None,
    )
)
_(
    Rule(
        code="RD201",
        name="dead-regression",
        summary="A site's dead fraction grew since the baseline report.",
        what_it_does=(
            "Compares each site with the site of the same name in a baseline report (the "
            "JSON report of an earlier scan or check) and flags it when its dead fraction "
            "grew by more than tolerance, default 0.02 (2 percentage points). A growth equal "
            "to the tolerance passes. Scan both with the same data and batch count: fewer "
            "samples give units fewer chances to fire and raise the dead fraction by "
            "themselves."
        ),
        why=(
            "Absolute limits catch a broken model; a baseline catches one that is getting "
            "worse. Units that die between two checkpoints rarely come back, so a "
            "regression caught at one checkpoint is cheaper to act on (roll back, lower the "
            "learning rate) than one found at the end of training."
        ),
        fix=(
            "Compare the two reports site by site; if the change is intended, record this "
            "report as the new baseline."
        ),
        references=(_LU,),
        severity="error",
        scope="site",
        param="tolerance",
        default=0.02,
    )
)
_(
    Rule(
        code="RD202",
        name="site-missing",
        summary="A site of the baseline report is missing from this model.",
        what_it_does=(
            "Flags each site of the baseline report that this model does not have "
            "(sites are matched by name)."
        ),
        why=(
            "A renamed or removed activation means the baseline no longer covers that part "
            "of the model, so a regression there would go unnoticed. It is usually an "
            "intended architecture change, so it warns instead of failing the gate."
        ),
        fix=(
            "If the architecture changed on purpose, record a new baseline; otherwise check "
            "that the right model file was scanned."
        ),
        references=(),
        severity="warning",
        scope="site",
    )
)
_(
    Rule(
        code="RD203",
        name="site-new",
        summary="This model has a site that the baseline report lacks.",
        what_it_does="Notes each site of this model that is not in the baseline report.",
        why=(
            "A new site has no history to compare with; it is still judged by the absolute "
            "limits (RD101, RD103). The note records the architecture change in the CI log."
        ),
        fix="Nothing if intended; record a new baseline so the next run compares it too.",
        references=(),
        severity="note",
        scope="site",
    )
)
_(
    Rule(
        code="RD301",
        name="non-finite-activation",
        summary="NaN or Inf reached a site's units during the scan.",
        what_it_does="Flags each site where NaN or Inf reached at least one unit.",
        why=(
            "A NaN spreads through every later layer and into the loss. The scan never "
            "counts such units as dead (NaN does not fire), so without this rule a broken "
            "model could pass the dead-unit limits."
        ),
        fix=(
            "Find the first site with NaN/Inf and check the inputs, then that layer's "
            "weights (e.g. a half-precision overflow); torch.autograd.detect_anomaly() shows "
            "where it starts in training."
        ),
        references=(
            Reference(
                "PyTorch: autograd anomaly detection",
                "https://pytorch.org/docs/stable/autograd.html#anomaly-detection",
            ),
        ),
        severity="error",
        scope="site",
    )
)
_(
    Rule(
        code="RD302",
        name="unbounded-activation",
        summary="A site's largest activation is above max_activation.",
        what_it_does=(
            "Flags each site whose largest output during the scan is above max_activation. "
            "Off unless max_activation is set."
        ),
        why=(
            "ReLU has no upper bound: one huge activation can overflow float16 or an int8 "
            "quantisation range, and it often comes before an exploding loss. ReLU6 caps "
            "outputs at 6 for exactly this reason."
        ),
        fix=(
            "Look at what feeds the site (weights, a missing normalisation); for "
            "low-precision deployment consider ReLU6 or clamping."
        ),
        references=(
            Reference(
                "Howard et al. (2017). MobileNets: Efficient Convolutional Neural Networks "
                "for Mobile Vision Applications (ReLU6 for low precision)",
                "https://arxiv.org/abs/1704.04861",
            ),
        ),
        severity="error",
        scope="site",
        param="max_activation",
        default=None,
    )
)
_(
    Rule(
        code="RD401",
        name="dead-by-construction",
        summary="Units whose weights and bias mean they can never fire, whatever the input.",
        what_it_does=(
            "Reads the layer that computes each site's pre-activation (a Linear or Conv, "
            "with a BatchNorm between folded in) and flags units whose incoming weights are "
            "all exactly zero and whose bias is <= 0: their pre-activation is that constant "
            "for every input, so they never fire. Needs no data."
        ),
        why=(
            "These units are dead for every possible input, not only for the scanned "
            "samples, and no gradient can revive them. They come from weight decay "
            "collapsing a row, from pruning, or from a checkpoint edited by hand. It warns "
            "instead of failing because pruned models have such units on purpose."
        ),
        fix=(
            "If the rows were pruned on purpose, remove the units or ignore this rule; "
            "otherwise re-initialise them (ReDo)."
        ),
        references=(
            Reference(
                "Li, Kadav, Durdanovic, Samet, Graf (2017). Pruning Filters for Efficient ConvNets",
                "https://arxiv.org/abs/1608.08710",
            ),
            _REDO,
        ),
        severity="warning",
        scope="site",
    )
)
_(
    Rule(
        code="RD402",
        name="batchnorm-predicted-dead",
        summary="A BatchNorm's own parameters say its channels feed a ReLU that never fires.",
        what_it_does=(
            "For a BatchNorm that feeds a ReLU, channel c outputs gamma_c * x + beta_c, where "
            "x is the input standardised by the running statistics (about mean 0, variance "
            "1 on training-like data). The channel is predicted dead when beta_c < -k "
            "|gamma_c|: it fires only on inputs more than k standard deviations above the "
            f"running mean. k is {BN_K:g}, above the margins of channels measured alive on "
            "trained nets. The finding gives the predicted count next to the measured one."
        ),
        why=(
            "BatchNorm with weight decay and a large learning rate kills channels by driving "
            "beta far below zero; the prediction finds them without data and cross-checks "
            "the scan: predicted but alive means rare inputs still reach the channel, dead "
            "but not predicted means it is dead on the scanned inputs only."
        ),
        fix=(
            "Re-initialise the channels (fresh incoming weights, gamma 1, beta 0) and "
            "exclude BatchNorm parameters from weight decay."
        ),
        references=(_BN, _MEHTA),
        severity="warning",
        scope="site",
    )
)
_(
    Rule(
        code="RD403",
        name="not-executed",
        summary="An activation module never ran during the scan.",
        what_it_does=(
            "Flags each activation module of the model that did not run on any scanned batch."
        ),
        why=(
            "Nothing was measured for it, so the gate cannot vouch for it: the forward skips "
            "it on these inputs (a branch, an unused layer) or runs code the capture cannot "
            "see."
        ),
        fix=(
            "Scan with inputs that take that path or remove the unused module; ignore the "
            "rule if it is unused on purpose."
        ),
        references=(),
        severity="warning",
        scope="site",
    )
)
del _


_DOCS_INTRO = """\
# Rules of `relu-doctor check`

Generated from `relu_doctor/gate/rules.py`, the same records that `relu-doctor explain`,
`relu-doctor rules`, the JSON findings and the SARIF rules come from (regenerate with
`RELU_DOCTOR_UPDATE_GOLDEN=1 pytest tests/test_rules.py`).

How the gate judges:

- Every finding names a rule by its code. Codes are never reused: a removed rule's code is
  retired for good, so a code in an old CI log or config always means the same thing.
- Severity: an `error` finding makes the model unhealthy (the gate fails); `warning` and
  `note` findings are reported and pass.
- A measured number equal to its limit passes: `max_layer_dead = 0.50` tolerates a site
  that is exactly half dead. Fractions are compared with a 1e-9 relative slack, so float
  rounding never decides.
- `select` / `ignore` take codes or prefixes (`RD1` = every `RD1xx`); `ignore` wins.
  Selecting a rule that is off until its threshold is set, without setting it, is an error.
- A baseline is the JSON report of an earlier scan or check, written by the same
  major.minor version of relu-doctor (another minor version is refused: its numbers may be
  defined differently) and scanned with the same `eps`. When it holds one model, that model
  is the baseline whatever its name; otherwise models are matched by name. Sites are
  matched by name; a missing or new site is a finding of its own, never an error.
- The weight rules (`RD4xx` but `RD403`) read the layer that produces each site's
  pre-activation; they need no data.
"""


def rules_markdown(rules: Iterable[Rule] = RULES) -> str:
    """``docs/rules.md``: how the gate judges, a table of the rules, then each record."""
    rules = list(rules)
    lines = [_DOCS_INTRO, "| code | name | severity | per | threshold |", "|---|---|---|---|---|"]
    for r in rules:
        th = r.threshold_text() or "–"
        lines.append(f"| {r.code} | {r.name} | {r.severity} | {r.scope} | {th} |")
    for r in rules:
        lines += ["", f"## {r.code} {r.name}", "", r.help_markdown()]
    return "\n".join(lines) + "\n"
