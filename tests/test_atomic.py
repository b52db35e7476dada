"""Writes that survive a kill or a power cut: a file renamed into place with its folder synced, a
folder swapped in whole, and the newest complete checkpoint found whatever state.json says."""

import json
import os
import shutil
import stat
import threading

import pytest
from jobs import Recorder, job, settings, sigterm

from loader.atomic import swap_in, write_json_atomic


def test_a_written_file_and_then_its_folder_are_synced(tmp_path, monkeypatch):
    synced, fsync = [], os.fsync

    def recording(fd):
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        return fsync(fd)

    monkeypatch.setattr(os, "fsync", recording)
    write_json_atomic(tmp_path / "state.json", {"epoch": 1})
    assert synced == ["file", "folder"]  # the data, then the rename that names it
    assert json.loads((tmp_path / "state.json").read_text()) == {"epoch": 1}


def test_a_swapped_folder_is_never_missing_for_a_reader(tmp_path):
    final = tmp_path / "saved_model"
    final.mkdir()
    (final / "saved_model.pb").write_text("0")
    missing, done = [], threading.Event()

    def reader():
        while not done.is_set():
            if not (final / "saved_model.pb").exists():
                missing.append(1)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for k in range(1, 300):
            new = tmp_path / f".tmp-new-{k}"
            new.mkdir()
            (new / "saved_model.pb").write_text(str(k))
            swap_in(new, final)
    finally:
        done.set()
        thread.join()
    assert not missing and (final / "saved_model.pb").read_text() == "299"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["saved_model"]  # every old export removed


@pytest.mark.slow
def test_state_json_naming_an_older_checkpoint_than_the_newest_record_loses(tiny_demo, tmp_path, caplog):
    """A kill after a checkpoint's record was written and before state.json was: the newest complete
    record wins (it resumed from the older position, training the steps between twice)."""
    caplog.set_level("INFO", logger="vidtrain")
    out = tmp_path / "out"
    assert job(settings(tiny_demo, out, epochs=3), Recorder(**{"step 1.1": sigterm}))[0] == 143
    folder = out / "checkpoints"
    shutil.copy(folder / "ckpt-e0001-s000000.json", folder / "state.json")  # as before the newest was recorded
    assert job(settings(tiny_demo, out, epochs=3))[0] == 0
    assert "resuming from" in caplog.text and "epoch 1, step 2" in caplog.text
    assert "state.json names an older position than ckpt-e0001-s000002.json" in caplog.text
