"""State dicts and training checkpoints: find the weights, strip wrapper prefixes, and fit
them into the model that ``arch`` builds, with a readable list of what does not fit."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from relu_doctor.errors import LoadError, param
from relu_doctor.load import specs

#: Where training checkpoints keep the model or its state dict, in the order tried.
WEIGHT_KEYS = ("state_dict", "model_state_dict", "model", "net", "module", "weights", "params")
ARCH_HINT = f"pass {param('arch')} MODULE:CALLABLE that builds the model"
_PREFIXES = ("module.", "model.")  # DataParallel/DDP, Lightning
_SHOWN = 5  # keys listed per kind in a mismatch message


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


def strip_prefixes(sd: Mapping[str, Any], arch_keys: set[str]) -> dict[str, Any]:
    """Drop `module.` / `model.` while every key has it and none of the model's keys do."""
    out = dict(sd)
    while out:
        strip = [p for p in _PREFIXES if all(k.startswith(p) for k in out)]
        strip = [p for p in strip if not any(k.startswith(p) for k in arch_keys)]
        if not strip:
            break
        out = {k.removeprefix(strip[0]): v for k, v in out.items()}
    return out


def fit(sd: Mapping[str, Any], arch: str, spec: str) -> nn.Module:
    model = specs.call_spec(arch, "arch")
    if not isinstance(model, nn.Module):
        raise LoadError(f"{param('arch')} {arch} returned {describe(model)}, not a torch.nn.Module")
    want = model.state_dict()
    sd = strip_prefixes(sd, set(want))
    problems = {
        "missing": [k for k in want if k not in sd],
        "unexpected": [k for k in sd if k not in want],
        "wrong shape": [
            f"{k} {tuple(v.shape)} vs model {tuple(want[k].shape)}"
            for k, v in sd.items()
            if k in want
            and isinstance(v, torch.Tensor)
            and not is_lazy(want[k])  # a lazy module's parameter has no shape yet
            and want[k].shape != v.shape
        ],
    }
    parts = [f"{kind} {_listing(keys)}" for kind, keys in problems.items() if keys]
    try:
        if not parts:
            model.load_state_dict(sd, strict=True)
            return model
    except Exception as exc:
        parts = [" ".join(str(exc).split())[:300]]
    raise LoadError(
        f"{spec} does not fit {param('arch')} {arch}: {'; '.join(parts)}; "
        f"check that {param('arch')} builds the architecture the weights were saved from"
    )


def _listing(items: list[str]) -> str:
    more = f", … {len(items) - _SHOWN} more" if len(items) > _SHOWN else ""
    return f"({len(items)}): " + ", ".join(items[:_SHOWN]) + more


def describe(obj: Any) -> str:
    if isinstance(obj, torch.Tensor):
        return f"a single tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, list | tuple):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__module__}.{type(obj).__qualname__} object"
