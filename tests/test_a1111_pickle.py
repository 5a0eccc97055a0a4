"""A1111-loadable .pt writing and safe .pt reading."""

from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy
import pytest
import torch
from a1111_safe_unpickler import A1111Refused, check_pt

from liandan.errors import FormatError
from liandan.formats.a1111_pickle import (
    A1111_ALLOWED_GLOBALS,
    load_error_summary,
    load_pt,
    pickle_globals,
    save_pt_a1111,
    torch_load_weights_only,
)
from liandan.formats.embedding import load_embedding


def _payload(marker: Path) -> object:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    return Payload()


def _strip_torch_extras(raw: bytes) -> bytes:
    """Re-zip a torch file without the two entries A1111 rejects, keeping whatever the pickle holds."""
    source = zipfile.ZipFile(io.BytesIO(raw))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as target:
        for info in source.infolist():
            if not info.filename.endswith((".format_version", ".storage_alignment")):
                target.writestr(info.filename, source.read(info))
    return out.getvalue()


def test_written_file_passes_a1111_check_and_loads_back(tmp_path: Path) -> None:
    vec = torch.randn(3, 32, requires_grad=True)
    obj = {
        "string_to_token": {"*": 265},
        "string_to_param": {"*": vec},
        "states": (OrderedDict(w=torch.ones(2, 2)), OrderedDict(w=torch.zeros(4).half())),
        "step": 4,
        "none": None,
        "floats": [1.0, 2.0, 1.0],
        "param": torch.nn.Parameter(torch.arange(4.0)),
    }
    path = save_pt_a1111(obj, tmp_path / "my.embedding.pt")

    check_pt(path)  # raises if a stock A1111 would refuse it
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        assert {n.split("/", 1)[0] for n in names} == {"my.embedding"}  # torch names the folder by stem
        assert not any(n.endswith((".format_version", ".storage_alignment")) for n in names)
        for info in archive.infolist():  # data records stay 64-byte aligned like torch writes them
            if "/data/" in info.filename:
                start = info.header_offset + 30 + len(info.filename) + len(info.extra)
                assert start % 64 == 0
    back = load_pt(path)
    assert torch.equal(back["string_to_param"]["*"], vec)
    assert back["string_to_param"]["*"].requires_grad
    assert torch.equal(back["states"][1]["w"], torch.zeros(4).half())
    assert isinstance(back["states"][0], OrderedDict)
    assert back["floats"] == [1.0, 2.0, 1.0]
    assert back["none"] is None and back["step"] == 4
    assert not list(tmp_path.glob(".*tmp"))  # the atomic write left nothing behind


def test_writing_is_deterministic(tmp_path: Path) -> None:
    obj = {"a": torch.arange(6.0).reshape(2, 3)}
    first = save_pt_a1111(obj, tmp_path / "a" / "x.pt").read_bytes()
    second = save_pt_a1111(obj, tmp_path / "b" / "x.pt").read_bytes()
    assert first == second


def test_a1111_rejects_torch_default_zip_but_accepts_ours(tmp_path: Path, fixtures_dir: Path) -> None:
    original = fixtures_dir / "embeddings" / "goldti.pt"
    with pytest.raises(A1111Refused, match="format_version"):
        check_pt(original)
    rewritten = save_pt_a1111(load_pt(original), tmp_path / "goldti.pt")
    check_pt(rewritten)


def test_unsupported_tensor_type_is_refused_before_writing(tmp_path: Path) -> None:
    target = tmp_path / "mask.pt"
    with pytest.raises(FormatError, match="BoolStorage"):
        save_pt_a1111({"mask": torch.zeros(3, dtype=torch.bool)}, target)
    assert not target.exists()


def test_failed_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = save_pt_a1111({"v": torch.ones(2)}, tmp_path / "keep.pt")
    before = target.read_bytes()
    with pytest.raises(FormatError):
        save_pt_a1111({"v": torch.ones(2, dtype=torch.bool)}, target)
    assert target.read_bytes() == before


@pytest.mark.parametrize("legacy", [False, True])
def test_malicious_pt_is_refused_and_never_executed(tmp_path: Path, legacy: bool) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"vec": torch.zeros(1), "x": _payload(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)

    refusal = r"evil\.pt: refused to load, because it refers to posix\.system"
    with pytest.raises(FormatError, match=refusal) as caught:
        load_pt(path)
    assert str(caught.value).isprintable()
    assert not marker.exists()
    with pytest.raises(A1111Refused):
        check_pt(path)
    assert not marker.exists()


def test_pickled_class_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "module.pt"
    path.write_bytes(_strip_torch_extras(_torch_bytes(torch.nn.Linear(2, 2))))
    with pytest.raises(FormatError, match=r"module\.pt"):
        load_pt(path)
    with pytest.raises(A1111Refused, match="forbidden"):
        check_pt(path)


def _torch_bytes(obj: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def test_pickle_globals_sees_the_payload(tmp_path: Path) -> None:
    data = pickle.dumps(_payload(tmp_path / "m"), protocol=2)
    assert any(name == "system" for _, name in pickle_globals(data))


def test_parameter_dict_embedding_loads_as_in_a1111(tmp_path: Path) -> None:
    """The original textual-inversion code pickled a ParameterDict; A1111 loads such files, so do we."""
    vectors = torch.randn(2, 8)
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(vectors.clone())})
    path = tmp_path / "old-style.pt"
    data = {"string_to_token": {"*": 265}, "string_to_param": params, "name": "old-style", "step": 500}
    path.write_bytes(_strip_torch_extras(_torch_bytes(data)))
    check_pt(path)  # a stock A1111 accepts this very file

    embedding = load_embedding(path)
    assert torch.equal(embedding.single, vectors)
    assert embedding.step == 500


def test_allowlist_is_what_a1111_resolves() -> None:
    from a1111_safe_unpickler import RestrictedUnpickler

    oracle = RestrictedUnpickler(io.BytesIO(b""))
    for module, name in A1111_ALLOWED_GLOBALS - {
        ("pytorch_lightning.callbacks", "model_checkpoint"),
        ("pytorch_lightning.callbacks.model_checkpoint", "ModelCheckpoint"),
    }:  # the oracle leaves pytorch_lightning out: it is not installed here
        oracle.find_class(module, name)
    for module, name in [("builtins", "eval"), ("torch", "load"), ("numpy", "load"), ("torch.nn", "Linear")]:
        assert (module, name) not in A1111_ALLOWED_GLOBALS
        with pytest.raises(A1111Refused):
            oracle.find_class(module, name)


def test_numpy_arrays_load_as_a1111_allows(tmp_path: Path) -> None:
    """numpy 1 pickles arrays through numpy.core.multiarray, numpy 2 through numpy._core: both load."""
    path = tmp_path / "arrays.pt"
    torch.save({"a": numpy.arange(3)}, path)
    assert load_pt(path)["a"].tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "content",
    [b"", b"not a zip at all", b"PK\x03\x04truncated", b"\x80\x02}q\x00.", b"\x1b[31mred\x1b[0m\n\nmore"],
)
def test_garbage_says_not_a_pytorch_file_in_one_sentence(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(FormatError) as caught:
        load_pt(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not a PyTorch file, or a corrupt one (")
    assert "malicious" not in message
    assert message.isprintable()  # one line, no terminal escape codes
    assert ". " not in message.removeprefix(str(path))  # one sentence, no torch advice after it


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not found"):
        load_pt(tmp_path / "nope.pt")


def test_weights_only_refusal_is_summarised_in_one_plain_clause(tmp_path: Path) -> None:
    """torch's own refusal is paragraphs of advice with terminal escape codes; ours names the culprit."""
    path = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), path)
    with pytest.raises(pickle.UnpicklingError) as caught:
        torch_load_weights_only(path)
    assert load_error_summary(caught.value) == (
        "it refers to torch.nn.modules.linear.Linear, which a weights-only load refuses; "
        "nothing in it was run"
    )
    torch_2_1 = "Weights only load failed. WeightsUnpickler error: Unsupported class a.B"  # its wording
    assert load_error_summary(pickle.UnpicklingError(torch_2_1)).startswith("it refers to a.B,")
    assert load_error_summary(RuntimeError("\x1b[1mbad\x1b[0m zip. Try this.\nAnd that.")) == "bad zip"
