"""What safe_torch_load admits and refuses, and the exact error each refusal gives.

Checkpoints are written by ``torch.save`` (zip and legacy formats) or, for the message hub, by
mmengine's own ``MessageHub.state_dict()`` as its CheckpointHook stores it.
"""

from __future__ import annotations

import io
import itertools
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from mmengine.logging import MessageHub
from mmengine.logging.history_buffer import HistoryBuffer
from mmengine.runner.checkpoint import CheckpointLoader

import aerialseg.engine.checkpoint as checkpoint
from aerialseg.engine import (
    CheckpointError,
    UnsafeCheckpointError,
    allow_checkpoint_globals,
    safe_torch_load,
)

ADVICE = (
    "not on AerialSeg's allow-list of safe globals. Loading it would run arbitrary code. If you "
    "trust this file and the class is plain data, add it with "
    "aerialseg.engine.allow_checkpoint_globals([...])."
)
# Every numpy scalar type (np.int64 is C long here, np.longlong a separate type). Non-empty
# values: an empty bytes object pickles as a call of builtins.bytes, which torch refuses anyway.
NUMERIC_TYPES = (
    np.bool_, np.int8, np.uint8, np.int16, np.uint16, np.int32, np.uint32, np.int64, np.uint64,
    np.longlong, np.ulonglong, np.float16, np.float32, np.float64, np.longdouble, np.complex64,
    np.complex128, np.clongdouble,
)  # fmt: skip
NUMPY_ARRAYS = {
    **{t.__name__: np.ones(2, dtype=t) for t in NUMERIC_TYPES},
    "bytes_": np.array([b"ab", b"c"]),
    "str_": np.array(["ab", "c"]),
    "void": np.array([b"\x01\x02", b"\x03\x04"], dtype="V2"),
}


@pytest.fixture
def torch_allow_list():
    """Restores torch's process-wide allow-list after the test, so that the test can run again in
    the same process (mutmut does) and leaves no class allowed for other tests."""
    saved = torch.serialization.get_safe_globals()
    yield
    torch.serialization.clear_safe_globals()
    torch.serialization.add_safe_globals(saved)


class NotAllowListed:
    pass


class AlsoNotAllowListed:
    pass


class TrustedRecord:
    def __init__(self):
        self.value = 5


class CallsSystem:
    """Pickles to a call of ``os.system`` (of a command that does nothing)."""

    def __reduce__(self):
        return (os.system, ("true",))


class GetattrOnLoad:
    """Pickles to ``getattr(owner, name)``, as mmengine pickles HistoryBuffer's statistics."""

    def __init__(self, owner, name: str):
        self.owner, self.name = owner, name

    def __reduce__(self):
        return (getattr, (self.owner, self.name))


def saved(tmp_path, payload, legacy: bool = False):
    path = tmp_path / ("legacy.pth" if legacy else "checkpoint.pth")
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return path


def test_numpy_allow_list_alone_admits_every_numpy_scalar_and_array(tmp_path, torch_allow_list):
    arrays = NUMPY_ARRAYS
    scalars = {name: array[0] for name, array in arrays.items()}
    path = saved(tmp_path, {"arrays": arrays, "scalars": scalars, "hub": HistoryBuffer()})
    torch.serialization.clear_safe_globals()
    with torch.serialization.safe_globals(checkpoint._numpy_safe_globals()):
        with pytest.raises(Exception, match="HistoryBuffer"):  # numpy classes only
            torch.load(path, weights_only=True)
        path = saved(tmp_path, {"arrays": arrays, "scalars": scalars})
        loaded = torch.load(path, weights_only=True)
    # The referee: what an unrestricted pickle round trip gives (np.longlong comes back as int64).
    expected = pickle.loads(pickle.dumps({"arrays": arrays, "scalars": scalars}))
    for group, name in itertools.product(("arrays", "scalars"), arrays):
        value, reference = loaded[group][name], expected[group][name]
        assert (type(value), value.dtype) == (type(reference), reference.dtype), name
        np.testing.assert_array_equal(value, reference)


def test_message_hub_history_round_trips(tmp_path):
    hub = MessageHub(name=str(tmp_path))  # a new hub each run (get_instance would share one)
    for loss in (np.float32(0.5), 0.25):
        hub.update_scalar("train/loss", loss)
    path = saved(tmp_path, {"message_hub": hub.state_dict()})  # pickles builtins.getattr
    history = safe_torch_load(path)["message_hub"]["log_scalars"]["train/loss"]
    assert isinstance(history, HistoryBuffer)
    np.testing.assert_array_equal(history.data[0], [0.5, 0.25])
    assert history.mean() == 0.375 and history.min() == 0.25 and history.current() == 0.25


@pytest.mark.parametrize(
    ("owner", "name", "shown"),
    [
        (HistoryBuffer, "_set_default_statistics", "'HistoryBuffer'"),  # private
        (HistoryBuffer, "__init__", "'HistoryBuffer'"),
        (HistoryBuffer, "data", "'HistoryBuffer'"),  # a property, not a method
        (np.ndarray, "min", "'ndarray'"),  # a statistics name, but not of HistoryBuffer
        (np.dtype("float32"), "newbyteorder", "dtype('float32')"),  # no __name__: its repr
    ],
)
def test_getattr_resolves_only_history_buffer_statistics_methods(tmp_path, owner, name, shown):
    statistics = GetattrOnLoad(HistoryBuffer, "max")
    assert safe_torch_load(saved(tmp_path, statistics)) is HistoryBuffer.max
    path = saved(tmp_path, GetattrOnLoad(owner, name))
    with pytest.raises(UnsafeCheckpointError) as refused:
        safe_torch_load(path)
    assert refused.value.names == ["builtins.getattr"]
    # torch.load itself, after `import aerialseg`, says which attribute was refused.
    with pytest.raises(Exception) as plain:
        torch.load(path, weights_only=True)
    assert (
        f"WeightsUnpickler error: \n\ngetattr({shown}, {name!r}) is not allowed (only "
        "HistoryBuffer statistics methods are); Unsupported global: GLOBAL builtins.getattr\n"
    ) in str(plain.value)


def test_refusal_names_the_file_and_every_global(tmp_path):
    path = saved(tmp_path, {"a": NotAllowListed()})
    with pytest.raises(UnsafeCheckpointError) as one:
        safe_torch_load(path)
    assert str(one.value) == (
        f"refusing to load checkpoint '{path}': it references '{__name__}.NotAllowListed', which "
        f"is {ADVICE}"
    )
    path = saved(tmp_path, {"b": [AlsoNotAllowListed(), NotAllowListed(), NotAllowListed()]})
    with pytest.raises(UnsafeCheckpointError) as two:
        safe_torch_load(path)
    names = [f"{__name__}.AlsoNotAllowListed", f"{__name__}.NotAllowListed"]
    assert (two.value.path, two.value.names) == (str(path), names)
    assert str(two.value) == (
        f"refusing to load checkpoint '{path}': it references '{names[0]}', '{names[1]}', which "
        f"are {ADVICE}"
    )


def test_legacy_format_loads_and_its_refusals_name_the_global(tmp_path):
    weights = {"w": torch.arange(3.0)}
    torch.testing.assert_close(safe_torch_load(saved(tmp_path, weights, legacy=True)), weights)
    with pytest.raises(UnsafeCheckpointError) as refused:
        safe_torch_load(saved(tmp_path, {"x": NotAllowListed()}, legacy=True))
    assert refused.value.names == [f"{__name__}.NotAllowListed"]  # not words of torch's advice
    # A module torch blocks outright is named in a message of another form.
    with pytest.raises(UnsafeCheckpointError) as refused:
        safe_torch_load(saved(tmp_path, {"x": CallsSystem()}, legacy=True))
    assert refused.value.names == [f"{os.system.__module__}.system"]


def test_weights_only_stays_on_when_the_environment_turns_it_off(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # honoured by a default torch.load
    with pytest.raises(UnsafeCheckpointError, match="NotAllowListed"):
        safe_torch_load(saved(tmp_path, {"x": NotAllowListed()}))


def test_map_location_reaches_torch_load_also_through_mmengine(tmp_path):
    path = saved(tmp_path, {"w": torch.ones(2)})
    assert safe_torch_load(path)["w"].device.type == "cpu"
    assert safe_torch_load(path, map_location="meta")["w"].is_meta
    assert CheckpointLoader.load_checkpoint(str(path), map_location="meta")["w"].is_meta


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_files_that_are_not_checkpoints_are_named_as_such(tmp_path):
    path = tmp_path / "model.pth"
    advice = "expected a .pth/.pt file written by torch.save, e.g. work_dirs/<config>/iter_*.pth"
    for content, reason in [
        (b"\x89PNG\r\n\x1a\n" + bytes(24), "it starts with bytes b'\\x89PNG\\r\\n\\x1a\\n'"),
        (zip_bytes({"notes.txt": b"data.pkl"}), "it is a zip archive without data.pkl"),
    ]:
        path.write_bytes(content)
        with pytest.raises(CheckpointError) as error:
            safe_torch_load(path)
        assert str(error.value) == f"'{path}' is not a torch checkpoint ({reason}); {advice}"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError) as error:
        safe_torch_load(path)
    assert str(error.value) == f"checkpoint '{path}' is empty (0 bytes)"


def test_damaged_checkpoints_say_what_torch_found(tmp_path):
    path = tmp_path / "model.pth"
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(64)}, buffer)
    complete = buffer.getvalue()
    path.write_bytes(complete[: len(complete) // 2])
    with pytest.raises(CheckpointError, match=r"is corrupt or truncated \(RuntimeError: Pytorch"):
        safe_torch_load(path)
    # data.pkl at the top level of the zip: torch wants it in a folder.
    with zipfile.ZipFile(io.BytesIO(complete)) as archive:
        flat = {n.split("/", 1)[1]: archive.read(n) for n in archive.namelist()}
    path.write_bytes(zip_bytes(flat))
    with pytest.raises(CheckpointError, match=r"corrupt or truncated \(RuntimeError: .*data\.pkl"):
        safe_torch_load(path)
    path.write_bytes(b"\x80\x02P0\n.")  # a pickle with a persistent id, which weights-only refuses
    with pytest.raises(CheckpointError) as error:
        safe_torch_load(path)
    assert str(error.value) == (
        f"checkpoint '{path}' is not a readable torch checkpoint: Unsupported operand 80"
    )


def test_allow_checkpoint_globals_admits_a_trusted_class(tmp_path, torch_allow_list):
    path = saved(tmp_path, {"record": TrustedRecord()})
    with pytest.raises(UnsafeCheckpointError, match="TrustedRecord"):
        safe_torch_load(path)
    allow_checkpoint_globals(iter([TrustedRecord]))  # any iterable
    assert safe_torch_load(path)["record"].value == 5
