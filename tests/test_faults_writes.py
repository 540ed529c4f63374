"""Fault suite, writes (docs/guarantees.md): disk full, read-only outputs, SIGKILL during a write and
between the two renames of a replace, two writers racing. Each case checks that nothing partial is
left, that the previous result is intact or restored, and that the error is one line."""

from __future__ import annotations

import errno
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from safetensors import SafetensorError

from hf_spectral import atomic, store
from hf_spectral.cli import main
from hf_spectral.errors import SpectralError
from hf_spectral.store import Snapshot, read_snapshot, write_snapshot
from tiny_models import private_module_cache_fixture, save_tiny

private_module_cache = private_module_cache_fixture()
REPO = Path(__file__).resolve().parent.parent


def small_snapshot(value: float, size: int = 8) -> Snapshot:
    table = pd.DataFrame({"name": ["w"], "status": ["ok"], "flag": [""], "spectral_norm": [value]})
    return Snapshot(table, spectra={"w": np.full(size, value)}, meta={"step": int(value)})


def debris(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def run_python(code: str, *args: str, check_killed: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    if check_killed:
        assert done.returncode == -signal.SIGKILL, done.stderr
    return done


WRITER = """
    import os, signal, sys
    import numpy as np, pandas as pd
    from pathlib import Path
    from hf_spectral import store
    from hf_spectral.store import Snapshot, write_snapshot

    final, stage = Path(sys.argv[1]), sys.argv[2]
    snapshot = Snapshot(pd.DataFrame({"name": ["w"], "status": ["ok"], "flag": [""], "spectral_norm": [9.0]}),
                        spectra={"w": np.full(8, 9.0)}, meta={"step": 9})
    if stage == "during":  # killed while the arrays file is half written
        def save_file(arrays, path):
            Path(path).write_bytes(b"half a safetensors file")
            os.kill(os.getpid(), signal.SIGKILL)
        store.save_file = save_file
    else:  # killed between the renames: the old snapshot moved aside, the new one not yet in place
        real = os.replace
        def replace(src, dst):
            real(src, dst)
            if ".old-" in str(dst):
                os.kill(os.getpid(), signal.SIGKILL)
        os.replace = replace
    write_snapshot(snapshot, final)
"""


def test_kill_during_write_leaves_the_old_snapshot_and_the_next_writer_cleans_up(tmp_path: Path) -> None:
    final = tmp_path / "snap"
    write_snapshot(small_snapshot(1.0), final)
    run_python(WRITER, str(final), "during")
    assert len(debris(tmp_path)) == 1 and debris(tmp_path)[0].startswith(".snap.tmp-")  # the crash state
    assert read_snapshot(final).spectra["w"][0] == 1.0  # readers still see the old, complete snapshot
    write_snapshot(small_snapshot(2.0), final)
    assert debris(tmp_path) == [] and read_snapshot(final).spectra["w"][0] == 2.0


def test_kill_between_renames_is_restored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    final = tmp_path / "snap"
    write_snapshot(small_snapshot(1.0), final)
    run_python(WRITER, str(final), "between")
    assert not final.exists() and debris(tmp_path)[0].startswith(".snap.old-")  # only the moved-aside old one
    with caplog.at_level(logging.WARNING, logger="hf_spectral"):
        atomic.recover(final)
    assert "restored the previous version" in caplog.text
    assert read_snapshot(final).spectra["w"][0] == 1.0 and debris(tmp_path) == []


def test_next_writer_recovers_after_a_kill_between_renames(tmp_path: Path) -> None:
    final = tmp_path / "snap"
    write_snapshot(small_snapshot(1.0), final)
    run_python(WRITER, str(final), "between")
    write_snapshot(small_snapshot(3.0), final)
    assert read_snapshot(final).spectra["w"][0] == 3.0 and debris(tmp_path) == []


def test_a_live_writers_temporary_is_left_alone(tmp_path: Path) -> None:
    final = tmp_path / "snap"
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from pathlib import Path
            from hf_spectral.atomic import atomic_folder
            with atomic_folder(Path(sys.argv[1])) as tmp:
                (tmp / "meta.json").write_text("{}")
                print("writing", flush=True)
                sys.stdin.readline()
            """), str(final)],
        env={**os.environ, "PYTHONPATH": str(REPO)}, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "writing"
        write_snapshot(small_snapshot(1.0), final)  # recovers: must not take the live writer's folder
        assert len(debris(tmp_path)) == 1
    finally:
        holder.communicate("go\n", timeout=60)
    assert holder.returncode == 0 and debris(tmp_path) == []
    assert (final / "meta.json").read_text() == "{}"  # the last writer won, whole


def test_two_writers_racing_both_succeed(tmp_path: Path) -> None:
    final = tmp_path / "snap"
    code = """
        import sys
        import numpy as np, pandas as pd
        from pathlib import Path
        from hf_spectral.store import Snapshot, write_snapshot
        value = float(sys.argv[2])
        for _ in range(15):
            write_snapshot(Snapshot(pd.DataFrame({"name": ["w"], "status": ["ok"], "flag": [""]}),
                                    spectra={"w": np.full(4, value)}), Path(sys.argv[1]))
    """
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writers = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(final), str(v)], env=env,
                                stderr=subprocess.PIPE, text=True) for v in (1, 2)]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    assert read_snapshot(final).spectra["w"][0] in (1.0, 2.0) and debris(tmp_path) == []


# ------------------------------------------------------------------------------------------------ disk full


def test_disk_full_in_the_arrays_file_is_one_line_and_leaves_nothing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "snap"
    write_snapshot(small_snapshot(1.0), final)

    def full(arrays, path):  # what safetensors raises when the disk fills
        Path(path).write_bytes(b"x" * 10)
        raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "
                              "\"No space left on device\" })")

    monkeypatch.setattr(store, "save_file", full)
    with pytest.raises(SpectralError) as info:
        write_snapshot(small_snapshot(2.0), final)
    assert "\n" not in str(info.value) and str(final) in str(info.value) and "No space left" in str(info.value)
    assert debris(tmp_path) == [] and read_snapshot(final).spectra["w"][0] == 1.0


def test_analyze_cli_on_a_full_disk_prints_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny("gpt2", tmp_path / "model", max_shard_size="10MB")
    capsys.readouterr()  # save_pretrained's progress bar

    def full(arrays, path):
        raise SafetensorError("Error while serializing: IoError(No space left on device)")

    monkeypatch.setattr(store, "save_file", full)
    code = main(["analyze", str(tmp_path / "model"), "--output", str(tmp_path / "out" / "snap"), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: cannot write snapshot to ")
    assert not (tmp_path / "out").exists()  # the folders it created are removed too


def mounted(folder: Path, options: str) -> bool:
    """Mount a tmpfs on ``folder`` when this process may (root with CAP_SYS_ADMIN)."""
    if os.environ.get("HF_SPECTRAL_TEST_NO_MOUNT"):
        return False
    try:
        return subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                              capture_output=True).returncode == 0
    except OSError:  # no mount program
        return False


@pytest.fixture
def tiny_tmpfs(tmp_path: Path):
    """A real 64 KiB filesystem (needs mount rights: root with CAP_SYS_ADMIN); skipped elsewhere."""
    mount = tmp_path / "small"
    mount.mkdir()
    if not mounted(mount, "size=64k"):
        pytest.skip("cannot mount a tmpfs here (not root): the monkeypatched disk-full tests cover the logic")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_real_full_disk(tiny_tmpfs: Path) -> None:
    write_snapshot(small_snapshot(1.0), tiny_tmpfs / "snap")
    with pytest.raises(SpectralError, match="No space left on device") as info:
        write_snapshot(small_snapshot(2.0, size=100_000), tiny_tmpfs / "snap")  # 800 kB of float64
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tiny_tmpfs)) == ["snap"] and read_snapshot(tiny_tmpfs / "snap").spectra["w"][0] == 1.0


# ------------------------------------------------------------------------------------------------ reports


@pytest.fixture(scope="module")
def dynamics():
    from test_plots import make_dynamics

    return make_dynamics(steps=(0, 100, 200), alignment=False)  # fewer figures: the faults are what is tested


def test_report_on_a_full_disk_leaves_no_figures(dynamics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    from hf_spectral.report import write_report

    out = tmp_path / "report"
    write_report(dynamics, out, formats=("png",))
    before = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    saved = []
    real = Figure.savefig

    def savefig(self, *args, **kwargs):
        saved.append(1)
        if len(saved) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(SpectralError) as info:
        write_report(dynamics, out, formats=("png",))
    assert "\n" not in str(info.value) and "No space left on device" in str(info.value)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == before  # the earlier report, whole
    assert [p.name for p in tmp_path.iterdir()] == ["report"]  # no temporary folder, no stray figures


def test_report_refuses_a_folder_of_other_files(dynamics, tmp_path: Path) -> None:
    from hf_spectral.report import write_report

    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(SpectralError, match="holds other files than a report"):
        write_report(dynamics, tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep"


@pytest.fixture
def read_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder nothing can be written to. We run as root, whom chmod does not stop: a read-only
    tmpfs when it can be mounted, else file creation under it fails with EROFS (monkeypatched)."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if mounted(folder, "ro,size=64k"):
        yield folder
        subprocess.run(["umount", str(folder)], check=True)
        return
    real_touch = pathlib.Path.touch

    def touch(self, *args, **kwargs):
        if Path(os.path.abspath(self)).is_relative_to(folder):
            raise OSError(errno.EROFS, "Read-only file system")
        return real_touch(self, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "touch", touch)
    yield folder


@pytest.mark.parametrize("command", ["report", "card"])
def test_report_and_card_check_a_read_only_output_before_computing(command: str, read_only: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    import hf_spectral.cli.card
    import hf_spectral.cli.report

    def never(args):
        raise AssertionError("the dynamics were computed before the output was checked")

    monkeypatch.setattr(hf_spectral.cli.report, "load_dynamics_for", never)
    monkeypatch.setattr(hf_spectral.cli.card, "load_dynamics_for", never)
    target = ["--output", str(read_only / "report")] if command == "report" else ["--model-card", str(read_only / "README.md")]
    code = main([command, str(tmp_path / "run"), *target, "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Read-only file system" in err[0] and str(read_only) in err[0]


@pytest.mark.slow
def test_two_processes_on_a_full_disk_fail_with_one_line(tmp_path: Path) -> None:
    from tiny_models import two_cpu_processes

    save_tiny("gpt2", tmp_path / "model", max_shard_size="10MB")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    command = two_cpu_processes(REPO / "tests" / "scripts" / "analyze_full_disk.py", str(tmp_path / "model"),
                                str(tmp_path / "snap"))
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    # torchrun itself prints a traceback (ChildFailedError) for any child that exits non-zero; ours exit 2
    # with one line, and none fails on a closed gloo connection
    assert done.returncode != 0 and "exitcode: 2" in done.stderr, done.stderr[-3000:]
    assert 'File "/' not in done.stderr.split("ChildFailedError")[0].split("Traceback")[0]
    assert "hf_spectral/" not in done.stderr and "Connection closed" not in done.stderr
    assert len(errors) == 1 and "No space left on device" in errors[0]
    assert sorted(os.listdir(tmp_path)) == ["model"]


def test_a_crashed_file_write_is_cleaned_up_by_the_next(tmp_path: Path) -> None:
    """The crash state of ``atomic_file`` (a temporary file nobody holds), simulated directly."""
    target = tmp_path / "log_history.json"
    target.write_text("[1]")
    (tmp_path / ".log_history.json.tmp-0123abcd").write_text("[1, 2")  # what a kill mid-write leaves
    with atomic.atomic_file(target) as tmp:
        tmp.write_text("[1, 2, 3]")
    assert target.read_text() == "[1, 2, 3]" and debris(tmp_path) == []


def test_debris_of_other_names_is_left_to_their_writers(tmp_path: Path) -> None:
    (tmp_path / ".other.tmp-0123abcd").mkdir()
    write_snapshot(small_snapshot(1.0), tmp_path / "snap")
    assert debris(tmp_path) == [".other.tmp-0123abcd"]
    atomic.recover_all(tmp_path)  # what the recorder runs over its record folder on resume
    assert debris(tmp_path) == []
