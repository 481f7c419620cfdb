"""State dicts and training checkpoints: find the weights, strip wrapper prefixes key by key,
and fit them into the model that ``arch`` builds, with a readable list of what does not fit.

Wrapper prefixes are `model.` (Lightning), `module.` (DataParallel/DDP) and `_orig_mod.`
(torch.compile), in any nesting (`model.module.`). A key is renamed only when the stripped
name is one of the model's keys, so a key that fits as it is stays as it is.

What `strict` allows (the default) and refuses:

- every key of the model must be in the file (else the model would be partly random);
- every key the model takes must have the model's shape;
- a key the model does not take is refused when it could be part of the model: the file's
  model keys sit at the top level (a plain state dict, where any extra key means another
  architecture), or the key lies under the prefix the model's keys were found under
  (`model.head.weight` in a Lightning file whose model is `model.`);
- a key outside that prefix is a *leftover* of the training wrapper (`criterion.weight`,
  `loss_fn.pos_weight`, `model_ema.0.weight`, `teacher.fc.bias` next to `model.`) and is
  ignored with a warning: it is not part of the model the file's weights describe.

With `strict=False` whatever fits is loaded; keys of the model that are missing or have
another shape keep the values `arch` initialised them with, and a warning lists them. A
file of which no key fits is refused either way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from relu_doctor.errors import LoadError, a_kind, param
from relu_doctor.load import specs

__all__ = ["ARCH_HINT", "WEIGHT_KEYS", "Fit", "describe", "find_weights", "fit", "match_keys"]

#: Where training checkpoints keep the model or its state dict, in the order tried.
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights", "params")
ARCH_HINT = f"pass {param('arch')} MODULE:CALLABLE that builds the model"
WRAPPERS = ("model.", "module.", "_orig_mod.")  # Lightning, DataParallel/DDP, torch.compile
_SHOWN = 5  # keys listed per kind in a message


def is_state_dict(value: Any) -> bool:
    items = value.items() if isinstance(value, Mapping) else ()
    ok = (
        isinstance(k, str) and (torch.is_tensor(v) or k.endswith("_extra_state")) for k, v in items
    )
    return bool(items) and all(ok)


def find_weights(ckpt: Mapping[Any, Any]) -> Mapping[str, Any] | nn.Module | None:
    """The model or state dict in a checkpoint dict (or the dict itself)."""
    if is_state_dict(ckpt):
        return ckpt
    for key in WEIGHT_KEYS:
        value = ckpt.get(key)
        if isinstance(value, nn.Module) or is_state_dict(value):
            return value
    return None


@dataclass
class Fit:
    """How a file's keys map onto a model's: `renamed` file key -> model key."""

    renamed: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # model keys the file lacks
    unexpected: list[str] = field(default_factory=list)  # file keys that may be the model's
    leftovers: list[str] = field(default_factory=list)  # file keys outside the model's prefix


def _target(key: str, want: Mapping[str, Any]) -> str | None:
    """`key`, or `key` with wrapper prefixes stripped, whichever is first a model key."""
    while True:
        if key in want:
            return key
        prefix = next((p for p in WRAPPERS if key.startswith(p)), None)
        if prefix is None:
            return None
        key = key[len(prefix) :]


def match_keys(keys: list[str], want: Mapping[str, Any]) -> Fit:
    """Map file keys to model keys; see the module docstring for what counts as what."""
    result = Fit()
    claimed: dict[str, str] = {}  # model key -> file key
    stray: list[str] = []
    for key in keys:
        target = _target(key, want)
        if target is None:
            stray.append(key)
        elif target in claimed:  # two file keys for one model key: the shorter wins
            if len(key) < len(claimed[target]):
                key, claimed[target] = claimed[target], key
            result.unexpected.append(key)
        else:
            claimed[target] = key
    result.renamed = {k: t for t, k in claimed.items()}
    result.missing = [k for k in want if k not in claimed]
    prefixes = {k[: len(k) - len(t)] for k, t in result.renamed.items()}
    for key in stray:
        inside = "" in prefixes or any(key.startswith(p) for p in prefixes)
        (result.unexpected if inside or not prefixes else result.leftovers).append(key)
    return result


def fit(
    sd: Mapping[str, Any], arch: str, spec: str, *, strict: bool = True
) -> tuple[nn.Module, list[str]]:
    """Build `arch` and load `sd` into it; returns the model and warnings for the caller."""
    model = specs.call_spec(arch, "arch")
    if not isinstance(model, nn.Module):
        raise LoadError(f"{param('arch')} {arch} returned {describe(model)}, not a torch.nn.Module")
    want = model.state_dict()
    keys = match_keys(list(sd), want)
    renamed = {t: sd[k] for k, t in keys.renamed.items()}
    wrong = [
        k
        for k, v in renamed.items()
        if isinstance(v, torch.Tensor)
        and not is_lazy(want[k])  # a lazy module's parameter has no shape yet
        and want[k].shape != v.shape
    ]
    shapes = [f"{k} {tuple(renamed[k].shape)} vs model {tuple(want[k].shape)}" for k in wrong]
    refused = {"missing": keys.missing, "unexpected": keys.unexpected, "wrong shape": shapes}
    nothing_fits = len(wrong) == len(renamed)  # never load an untrained model
    if (strict or nothing_fits) and any(refused.values()):
        parts = [f"{kind} {_listing(v)}" for kind, v in refused.items() if v]
        _refuse(spec, arch, parts, loose=not nothing_fits)
    for k in wrong:
        del renamed[k]
    try:
        model.load_state_dict(renamed, strict=strict)
    except Exception as exc:
        _refuse(spec, arch, [" ".join(str(exc).split())[:300]], loose=False)
    # Warnings are plain text (no param markers): the report shows them as they are.
    ignored = keys.leftovers + (keys.unexpected if not strict else [])
    warnings = [f"ignored {_count(ignored)} not in the model: {_names(ignored)}"] * bool(ignored)
    if keys.missing and not strict:
        warnings.append(
            f"{_count(keys.missing, 'model key')} not in the file kept the initial values "
            f"{arch} gave them: {_names(keys.missing)}"
        )
    if wrong and not strict:
        warnings.append(
            f"{_count(wrong, 'model key')} of another shape in the file kept the initial "
            f"values {arch} gave them: {_names(shapes)}"
        )
    return model, warnings


def _refuse(spec: str, arch: str, parts: list[str], *, loose: bool) -> NoReturn:
    hint = f", or pass {param('strict', False)} to load the keys that fit" if loose else ""
    raise LoadError(
        f"{spec} does not fit {param('arch')} {arch}: {'; '.join(parts)}; check that "
        f"{param('arch')} builds the architecture the weights were saved from{hint}"
    )


def _count(items: list[str], noun: str = "key") -> str:
    return f"{len(items)} {noun}{'s' * (len(items) != 1)}"


def _names(items: list[str]) -> str:
    more = f", … {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more


def _listing(items: list[str]) -> str:
    return f"({len(items)}): {_names(items)}"


def describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, list | tuple):
        return f"{a_kind(type(obj).__name__)} of {len(obj)} items"
    return f"{a_kind(f'{type(obj).__module__}.{type(obj).__qualname__}')} object"
