"""Damaged model files: a zip whose bytes no longer match its CRC-32s is refused before it is
read; formats without checksums load with a warning saying they cannot be checked."""

from __future__ import annotations

import random
import zipfile
from pathlib import Path

import pytest
import torch
from torch import nn

from relu_doctor.errors import LoadError
from relu_doctor.load import verify
from relu_doctor.load.model import load_model
from relu_doctor.load.verify import verify_zip
from tests.fixtures.loading import damage, flip_bytes, pt2_bytes, record_span, tiny, write_arch

COPIES = 120


@pytest.fixture
def arch(tmp_path: Path) -> str:
    return f"{write_arch(tmp_path)}:build"


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("what", ["state-dict", "whole-model"])
def test_no_damaged_copy_loads_changed_weights(tmp_path: Path, arch: str, what: str) -> None:
    """Seeded random damage: each copy is refused, or loads exactly the saved weights."""
    model = tiny()
    good = tmp_path / "model.pt"
    torch.save(model.state_dict() if what == "state-dict" else model, good)
    rng = random.Random(15)
    refused = 0
    for i in range(COPIES):
        copy = tmp_path / f"copy{i}.pt"
        copy.write_bytes(flip_bytes(good.read_bytes(), rng, rng.randint(1, 3)))
        try:
            loaded = load_model(str(copy), arch=arch if what == "state-dict" else None)
        except LoadError as exc:
            refused += "is damaged" in str(exc)
            continue
        assert same_weights(loaded.module, model), f"copy {i} loaded changed weights"
    assert refused >= COPIES // 4  # most flips land in checked bytes (the rest is padding)


def test_damaged_record_message(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    assert damage(path, "data/3") == "model/data/3"
    with pytest.raises(LoadError) as err:
        load_model(str(path), arch=arch)
    assert str(err.value) == (
        f"{path} is damaged: record model/data/3 fails its CRC-32 check (its bytes changed "
        "after it was saved: an interrupted copy or a failing disk); copy it again from a "
        "good source or save it again (to load it unchecked, pass verify=False)"
    )
    flags = {("verify", "False"): "--no-verify"}
    assert err.value.render(lambda name, value: flags[name, value]).endswith("pass --no-verify)")


def test_no_verify_loads_the_damaged_file_as_it_is(tmp_path: Path, arch: str) -> None:
    """What `verify` protects from: torch itself loads the changed weights without a word."""
    model = tiny()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    damage(path, "data/0")
    loaded = load_model(str(path), arch=arch, verify=False)
    assert not same_weights(loaded.module, model)
    assert loaded.warnings == []


@pytest.mark.parametrize(
    ("suffix", "match"),
    [
        ("data.pkl", "record model/data.pkl fails its CRC-32 check"),
        ("byteorder", "record model/byteorder fails its CRC-32 check"),
    ],
)
def test_damage_outside_the_weights_is_named_too(
    tmp_path: Path, arch: str, suffix: str, match: str
) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    damage(path, suffix, 2)
    with pytest.raises(LoadError, match=match):
        load_model(str(path), arch=arch)


def test_damaged_header_is_named(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    name, _, _ = record_span(path, "data/1")
    data = bytearray(path.read_bytes())
    data[data.index(name.encode()) + 1] ^= 0x01  # the name in its local header (first copy)
    path.write_bytes(bytes(data))
    with pytest.raises(LoadError, match=rf"record {name} cannot be read \(its header names"):
        load_model(str(path), arch=arch)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_damaged_torchscript_refused_even_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "scripted.pt"
    torch.jit.script(tiny()).save(str(path))
    damage(path, "data/0")
    with pytest.raises(LoadError, match=r"scripted\.pt is damaged: record scripted/data/0 fails"):
        load_model(str(path), trust=True)


def test_damaged_export_program_refused_even_with_trust(tmp_path: Path) -> None:
    path = tmp_path / "prog.pt2"
    path.write_bytes(pt2_bytes())
    name = damage(path, "weight_0")
    with pytest.raises(LoadError, match=rf"is damaged: record {name} fails"):
        load_model(str(path), trust=True)


def test_untrusted_code_archive_is_refused_before_it_is_read(tmp_path: Path) -> None:
    path = tmp_path / "prog.pt2"
    path.write_bytes(pt2_bytes())
    damage(path, "weight_0")
    with pytest.raises(LoadError, match=r"torch\.export program"):  # trust first: no read
        load_model(str(path))


def test_records_longer_than_a_chunk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify, "CHUNK", 7)
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    verify_zip(path, str(path))
    name = damage(path, "data/0", 100)
    with pytest.raises(LoadError, match=f"record {name} fails"):
        verify_zip(path, str(path))


def test_compressed_records(tmp_path: Path) -> None:
    """Zips written by other tools may deflate their records: those are checked too."""
    src = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), src)
    packed = tmp_path / "packed.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as zout:
        for name in zin.namelist():
            zout.writestr(name, zin.read(name) * 4)
    verify_zip(packed, "packed.pt")
    _, start, size = record_span(packed, "data/0")
    data = bytearray(packed.read_bytes())
    data[start + size // 2] ^= 0x10
    packed.write_bytes(bytes(data))
    with pytest.raises(LoadError, match=r"packed\.pt is damaged: record model/data/0"):
        verify_zip(packed, "packed.pt")


def test_intact_files_carry_no_warning(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "model.pt"
    torch.save(tiny().state_dict(), path)
    assert load_model(str(path), arch=arch).warnings == []
    assert load_model("torch.nn:ReLU").warnings == []


def test_legacy_file_cannot_be_verified(tmp_path: Path, arch: str) -> None:
    path = tmp_path / "old.pt"
    torch.save(tiny().state_dict(), path, _use_new_zipfile_serialization=False)
    assert load_model(str(path), arch=arch).warnings == [
        "old.pt cannot be checked for damage: it has no checksums (torch's legacy (pre-1.6) "
        "format stores none; re-save it with a current torch.save to make it verifiable)"
    ]
    assert load_model(str(path), arch=arch, verify=False).warnings == []


def test_safetensors_cannot_be_verified(tmp_path: Path, arch: str) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    path = tmp_path / "w.safetensors"
    safetensors.save_file(dict(tiny().state_dict()), str(path))
    assert load_model(str(path), arch=arch).warnings == [
        "w.safetensors cannot be checked for damage: it has no checksums "
        "(.safetensors files store none)"
    ]


def test_trusted_plain_pickle_cannot_be_verified(tmp_path: Path) -> None:
    import pickle

    path = tmp_path / "m.pkl"
    path.write_bytes(pickle.dumps(tiny()))
    warnings = load_model(str(path), trust=True).warnings
    assert warnings == [
        "m.pkl cannot be checked for damage: it has no checksums (plain pickles store none)"
    ]
