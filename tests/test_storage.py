"""On-disk format: save/load round trips, atomic replacement, and clear errors for bad files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from _builders import tiny_log

from shoal.datasets import storage
from shoal.datasets.requests import ARRAY_SPEC, RequestLog


@pytest.fixture
def log() -> RequestLog:
    return tiny_log()


@pytest.fixture
def saved(log: RequestLog, tmp_path: Path) -> Path:
    return storage.save(log, tmp_path / "ds")


def _assert_logs_equal(a: RequestLog, b: RequestLog) -> None:
    assert a.name == b.name
    assert a.schema == b.schema
    assert a.info == b.info
    aa, ba = a.arrays(), b.arrays()
    assert sorted(aa) == sorted(ba)
    for k in aa:
        assert aa[k].dtype == ba[k].dtype, k
        np.testing.assert_array_equal(aa[k], ba[k], err_msg=k)


# ================================================================================= storage
def test_save_load_round_trip(log: RequestLog, saved: Path) -> None:
    assert saved.is_dir() and (saved / "meta.json").is_file()
    back = storage.load(saved)
    _assert_logs_equal(back, log)
    assert back.req_truth is not None
    assert [p.name for p in saved.parent.iterdir()] == ["ds"]  # no temporary folder left


def test_save_load_round_trip_mmap(log: RequestLog, saved: Path) -> None:
    back = storage.load(saved, mmap=True)
    _assert_logs_equal(back, log)
    assert isinstance(back.ie_time, np.memmap)
    assert not back.ie_time.flags.writeable
    b1 = back.batch(np.array([0, 1, 2]), ie_len=3, ipv_len=2)
    b2 = log.batch(np.array([0, 1, 2]), ie_len=3, ipv_len=2)
    np.testing.assert_array_equal(b1.ie_act, b2.ie_act)
    np.testing.assert_array_equal(b1.cand_item, b2.cand_item)


def test_save_load_without_optional_arrays(log: RequestLog, tmp_path: Path) -> None:
    log.req_truth = None
    log.info = None
    back = storage.load(storage.save(log, tmp_path / "d"))
    assert back.req_truth is None
    assert not (tmp_path / "d" / "req_truth.npy").exists()
    assert back.info == {}


def test_save_refuses_to_overwrite(log: RequestLog, saved: Path) -> None:
    before = (saved / "meta.json").read_bytes()
    log.name = "other"
    with pytest.raises(ValueError, match="overwrite=True"):
        storage.save(log, saved)
    assert (saved / "meta.json").read_bytes() == before
    assert storage.load(saved).name == "tiny"


def test_save_refuses_to_replace_non_dataset_folder(log: RequestLog, tmp_path: Path) -> None:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="not a Shoal dataset"):
        storage.save(log, folder, overwrite=True)
    assert (folder / "notes.txt").read_text() == "precious"
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]


def test_save_overwrite_replaces(log: RequestLog, saved: Path) -> None:
    new = tiny_log()
    new.name = "replaced"
    new.req_truth = None
    new.req_trigger = np.array([3, 3, 3], np.int8)
    assert storage.save(new, saved, overwrite=True) == saved
    back = storage.load(saved)
    _assert_logs_equal(back, new)
    assert not (saved / "req_truth.npy").exists()  # old arrays do not linger
    assert [p.name for p in saved.parent.iterdir()] == ["ds"]


def test_failed_validation_leaves_existing_dataset_intact(log: RequestLog, saved: Path) -> None:
    bad = tiny_log()
    bad.ie_offsets = np.array([0, 4, 5], np.int64)
    with pytest.raises(ValueError, match="ie_offsets bounds"):
        storage.save(bad, saved, overwrite=True)
    _assert_logs_equal(storage.load(saved), log)
    assert [p.name for p in saved.parent.iterdir()] == ["ds"]


def test_failed_write_leaves_existing_dataset_intact(log: RequestLog, saved: Path) -> None:
    bad = tiny_log()
    bad.name = "unserialisable"
    bad.info = {"thing": object()}  # passes validate, fails while writing meta.json
    with pytest.raises(TypeError, match="not JSON serialisable"):
        storage.save(bad, saved, overwrite=True)
    _assert_logs_equal(storage.load(saved), log)
    assert [p.name for p in saved.parent.iterdir()] == ["ds"]


def test_save_creates_parent_folders(log: RequestLog, tmp_path: Path) -> None:
    out = storage.save(log, tmp_path / "a" / "b" / "ds")
    assert storage.load(out).n_requests == 3


# ----------------------------------------------------------------------------- load errors
def _load_error(path: Path, mmap: bool = False) -> str:
    with pytest.raises(ValueError) as info:
        storage.load(path, mmap=mmap)
    return str(info.value)


def test_load_missing_meta(saved: Path) -> None:
    (saved / "meta.json").unlink()
    msg = _load_error(saved)
    assert str(saved) in msg and "meta.json" in msg


def test_load_missing_folder(tmp_path: Path) -> None:
    assert "meta.json" in _load_error(tmp_path / "nothing")


def test_load_corrupt_meta(saved: Path) -> None:
    (saved / "meta.json").write_text('{"format": "shoal-request-log", "vers')
    msg = _load_error(saved)
    assert str(saved / "meta.json") in msg and "corrupt" in msg


def test_load_meta_not_utf8(saved: Path) -> None:
    (saved / "meta.json").write_bytes(b"\xff\xfe\x00garbage")
    assert str(saved / "meta.json") in _load_error(saved)


@pytest.mark.parametrize("case", ["no-arrays-key", "top-level-list"])
def test_load_meta_with_wrong_structure(saved: Path, case: str) -> None:
    # valid JSON that is not a dataset description is a corrupt meta.json: ValueError naming it
    meta_path = saved / "meta.json"
    if case == "top-level-list":
        meta_path.write_text("[]")
    else:
        meta = json.loads(meta_path.read_text())
        del meta["arrays"]
        meta_path.write_text(json.dumps(meta))
    assert str(meta_path) in _load_error(saved)


def test_load_wrong_format_version(saved: Path) -> None:
    meta_path = saved / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["version"] = 99
    meta_path.write_text(json.dumps(meta))
    msg = _load_error(saved)
    assert str(meta_path) in msg and "version 99" in msg


def test_load_wrong_format_name(saved: Path) -> None:
    meta_path = saved / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["format"] = "something-else"
    meta_path.write_text(json.dumps(meta))
    assert "something-else" in _load_error(saved)


@pytest.mark.parametrize("mmap", [False, True])
def test_load_garbage_npy(saved: Path, mmap: bool) -> None:
    f = saved / "ie_time.npy"
    f.write_bytes(b"\x00\x01garbage-bytes" * 8)
    assert str(f) in _load_error(saved, mmap)


@pytest.mark.parametrize("mmap", [False, True])
def test_load_truncated_npy(saved: Path, mmap: bool) -> None:
    f = saved / "slate_label.npy"
    f.write_bytes(f.read_bytes()[:-3])
    assert str(f) in _load_error(saved, mmap)


def test_load_truncated_npy_header(saved: Path) -> None:
    f = saved / "req_user.npy"
    f.write_bytes(f.read_bytes()[:20])
    assert str(f) in _load_error(saved)


def test_load_missing_npy(saved: Path) -> None:
    f = saved / "req_end.npy"
    f.unlink()
    assert str(f) in _load_error(saved)


def test_load_array_shape_disagrees_with_meta(saved: Path) -> None:
    f = saved / "ie_time.npy"
    np.save(f, np.zeros(5, np.float64))  # meta says (6,)
    msg = _load_error(saved)
    assert str(f) in msg and "[6]" in msg and "[5]" in msg


def test_load_array_dtype_disagrees_with_meta(saved: Path) -> None:
    f = saved / "req_start.npy"
    np.save(f, np.array([0, 2, 1], np.int64))  # meta says int32
    msg = _load_error(saved)
    assert str(f) in msg and "int32" in msg and "int64" in msg


def test_load_meta_missing_a_required_array(saved: Path) -> None:
    meta_path = saved / "meta.json"
    meta = json.loads(meta_path.read_text())
    del meta["arrays"]["req_trigger"]
    meta_path.write_text(json.dumps(meta))
    assert "req_trigger" in _load_error(saved)


def test_load_meta_unknown_array(saved: Path) -> None:
    meta_path = saved / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["arrays"]["bogus"] = {"dtype": "int32", "shape": [1]}
    meta_path.write_text(json.dumps(meta))
    assert "bogus" in _load_error(saved)


def test_load_runs_validate(saved: Path, tmp_path: Path) -> None:
    # consistent with meta.json but not with the other arrays
    f = saved / "req_ie_end.npy"
    np.save(f, np.array([3, 5, 6], np.int64))
    assert "history end indices" in _load_error(saved)


def test_array_spec_covers_every_required_array(saved: Path) -> None:
    files = {p.stem for p in saved.glob("*.npy")}
    assert set(ARRAY_SPEC) <= files
    assert files - set(ARRAY_SPEC) == {"req_truth"}


def test_copied_dataset_loads(saved: Path, tmp_path: Path) -> None:
    dst = tmp_path / "copy"
    shutil.copytree(saved, dst)
    _assert_logs_equal(storage.load(dst), storage.load(saved))
