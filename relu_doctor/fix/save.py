"""Write a repaired model in the form its input came in, atomically.

- ``torch.save(model)``, alone or under a checkpoint key: the same, the repaired model in
  its place (other checkpoint keys as they were);
- a state dict, alone or under a checkpoint key (``arch``): the same keys (prefixes kept)
  with the repaired values; keys the model does not take as they were;
- ``.safetensors`` (``arch``): ``.safetensors`` with the same keys and metadata;
- a TorchScript archive or ``torch.export`` ``.pt2``: saved again the same way (these can
  only be re-initialised: their forward is compiled);
- a ``MODULE:CALLABLE`` factory: ``torch.save(model)``.

A state dict holds weights only: the architecture (``arch``) decides the activations, so a
swap cannot be written as one; ``swap_refusal`` says so before any work is done. Every save
returns notes for the user: the file needs trust to load, the optimizer state of a
checkpoint is stale.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from relu_doctor.errors import LoadError, UsageError, param
from relu_doctor.load import specs
from relu_doctor.load.model import file_format
from relu_doctor.load.pickles import unpickle, unsafe_globals
from relu_doctor.load.state_dict import WEIGHT_KEYS, find_weights, is_state_dict, match_keys
from relu_doctor.output.files import check_writable, write_atomic

_CPU = torch.device("cpu")


def check_out(spec: str, out: str, force: bool) -> None:
    """``out`` can be written and is not the input model (unless ``force``)."""
    check_writable(out, "out")
    src, dst = Path(spec), Path(out)
    if src.exists() and dst.exists() and os.path.samefile(src, dst) and not force:
        raise UsageError(
            f"{param('out')} {out} is the input model; write the repaired model elsewhere, "
            f"or pass {param('force')} to overwrite the input",
            param="out",
        )


def swap_refusal(arch: str | None, to: str) -> str | None:
    """Why a swap cannot be written in the input's form (a state dict), or None."""
    if arch is None or to == "reinit":
        return None
    return (
        f"the input is a state dict for {param('arch')} {arch}: it holds weights only, and "
        f"the activations are what {arch} builds, so a swap cannot be written as a state dict; "
        f"change the activation in that code (the weights load as they are), or use "
        f"{param('to')} reinit"
    )


def save(spec: str, out: str, repaired: Any, runtime: str, *, trust: bool, to: str) -> list[str]:
    """Write ``repaired`` (a module, or an ``ExportedProgram``) to ``out`` in the form of
    ``spec``; returns notes for the user. Moves an eager module to the CPU."""
    buffer = io.BytesIO()
    notes: list[str] = []
    if runtime == "export":
        torch.export.save(repaired, buffer)
        write_atomic(out, buffer.getvalue())
        return ["the .pt2 program runs code on load: scan it with trust, as its input"]
    if runtime == "script":
        torch.jit.save(repaired, buffer)
        write_atomic(out, buffer.getvalue())
        return ["the TorchScript archive runs code on load: scan it with trust, as its input"]
    module = repaired.to(_CPU)
    if specs.looks_like_spec(spec) and not Path(spec).exists():
        torch.save(module, buffer)
        write_atomic(out, buffer.getvalue())
        return _trust_notes(out, trust=True)
    fmt = file_format(spec)
    if fmt == "safetensors":
        write_atomic(out, _safetensors(spec, module))
        return notes
    container = unpickle(Path(spec), spec, fmt, trust, _CPU)
    new, key = _replace(container, module, spec)
    torch.save(new, buffer)
    write_atomic(out, buffer.getvalue())
    if isinstance(new, Mapping) and key is not None:
        notes += _optimizer_notes(new, to)
    if isinstance(find_weights(new) if isinstance(new, Mapping) else new, nn.Module):
        notes += _trust_notes(out, trust)
    return notes


def _replace(container: Any, module: nn.Module, spec: str) -> tuple[Any, str | None]:
    """The container with the repaired model (or its weights) where the input had its own;
    the checkpoint key it sits under (None: the container itself)."""
    if isinstance(container, nn.Module):
        return module, None
    if not isinstance(container, MutableMapping):
        raise LoadError(f"{spec}: cannot tell where the model sits in it")
    if is_state_dict(container):
        return _weights(container, module), None
    for key in WEIGHT_KEYS:
        value = container.get(key)
        if isinstance(value, nn.Module):
            return {**container, key: module}, key
        if isinstance(value, Mapping) and is_state_dict(value):
            return {**container, key: _weights(value, module)}, key
    raise LoadError(f"{spec}: cannot tell where the model sits in it")


def _weights(sd: Mapping[str, Any], module: nn.Module) -> dict[str, Any]:
    """The file's state dict with the repaired values under the file's own key names (a
    ``module.``/``model.`` prefix stays); keys the model does not take stay as they were."""
    repaired = module.state_dict()
    fit = match_keys(list(sd), repaired)
    out = dict(sd)
    for file_key, model_key in fit.renamed.items():
        old = sd[file_key]
        new = repaired[model_key].detach()
        out[file_key] = new.to(old.dtype).clone() if isinstance(old, torch.Tensor) else new
    return out


def _safetensors(spec: str, module: nn.Module) -> bytes:
    from safetensors import safe_open
    from safetensors.torch import save

    with safe_open(spec, framework="pt") as f:
        metadata = f.metadata()
        sd = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
    out = {k: v.contiguous() for k, v in _weights(sd, module).items()}
    return save(out, metadata=metadata)


def _optimizer_notes(container: Mapping[str, Any], to: str) -> list[str]:
    keys = [k for k in container if isinstance(k, str) and "optim" in k.lower()]
    if not keys:
        return []
    what = (
        "moments of the re-initialised rows are stale: reset them, or start a new optimizer"
        if to == "reinit"
        else "it was made for the old parameters: start a new optimizer"
    )
    return [f"the checkpoint's {', '.join(map(repr, keys))} kept the optimizer state; {what}"]


def _trust_notes(out: str, trust: bool) -> list[str]:
    """Say so when the written pickle names code outside torch.nn (loading it needs trust)."""
    needed = unsafe_globals(Path(out), "torch-zip")
    if not needed:
        return []
    shown = ", ".join(needed[:4]) + (" …" if len(needed) > 4 else "")
    fx = any("fx" in g for g in needed)
    why = "a torch.fx GraphModule (the rewritten forward) runs code on load" if fx else ""
    why = why or ("it holds your own classes" if trust else "it holds code outside torch.nn")
    return [f"loading it needs trust: {why} ({shown})"]
