"""Bad input never runs, file-system faults never lose work, one run folder one writer.

One regression test (or parametrised case) per defect of issue 16, numbered
as there. CLI cases check the three promises: one ``error:`` line, no
traceback, exit code 2, and nothing half-written left behind. Settings are
refused before any model is loaded: ``cli.load`` is replaced by a function
that fails the test when called.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import make_image
from PIL import Image
from typer.testing import CliRunner

from analysis import cli, fsio
from analysis.checks import ConfigError, check_layers, check_settings
from analysis.datasets import DatasetError, items_from_records, read_pope
from analysis.evaluation import LOCK, evaluate
from analysis.loading import DEMO_MODEL_DIR, ModelLoadError, load_model
from analysis.tokens import MAX_LENGTH_KEY, ImageError, build_inputs, load_image
from analysis.var import VarConfig, VarIntervention

DEMO = DEMO_MODEL_DIR.parent
REPO = DEMO.parent.parent
QUESTIONS = DEMO / "questions.jsonl"
IMAGES = DEMO / "images"
IMAGE = IMAGES / "demo_00.png"
# A small, quick evaluation on the demo model (4 items, one condition, log-probs only).
QUICK = [
    "--limit",
    "4",
    "--conditions",
    "baseline",
    "--max-new-tokens",
    "0",
    "--no-stats",
    "--no-progress",
]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")


def _no_load(*args, **kwargs):
    raise AssertionError("the model was loaded before the settings were checked")


@pytest.fixture
def refused(monkeypatch):
    """A CLI runner where loading a model fails the test."""
    monkeypatch.setattr(cli, "load", _no_load)
    return CliRunner()


@pytest.fixture
def runner(demo_model, monkeypatch):
    """A CLI runner on the (already loaded) demo model."""
    monkeypatch.setattr(cli, "load", lambda *args, **kwargs: demo_model)
    return CliRunner()


def _one_line_error(result, message: str, code: int = 2) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert message in errors[0], result.output


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


# ============================================================ 1. nonsense accepted silently

NAN, INF = "nan", "inf"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sinks", "--tau", NAN], "tau must be positive"),
        (["sinks", "--tau", INF], "tau must be positive"),
        (["eval", "--out", "{out}", "--tau", NAN], "tau must be positive"),
        (["eval", "--out", "{out}", "--conditions", "var:tau=nan"], "tau must be positive"),
        (["eval", "--out", "{out}", "--rho", NAN], "rho must be in [0, 1]"),
        (["eval", "--out", "{out}", "--conditions", "var:convention=bogus"], "convention"),
        (["eval", "--out", "{out}", "--limit", "-1"], "limit must be >= 1"),
        (["eval", "--out", "{out}", "--limit", "0"], "limit must be >= 1"),
        (["eval", "--out", "{out}", "--batch-size", "0"], "batch_size must be >= 1"),
        (["eval", "--out", "{out}", "--n-boot", "0"], "n_boot must be >= 1"),
        (["eval", "--out", "{out}", "--max-length", "0"], "max_length must be >= 1"),
        (["ablate", "--tau", INF], "tau must be positive"),
        (["ablate", "--mode", "sideways"], "--mode must be one of pre, post"),
        (["heads", "--rho", NAN], "rho must be in [0, 1]"),
        (["dims", "--min-ratio", NAN], "min_ratio must be positive"),
        (["contribution", "--tau", "-1"], "tau must be positive"),
        (["report", "--p", "2", "--out", "{out}.html"], "p must be in [0, 1]"),
        (["figures", "--rho", NAN, "--out", "{out}"], "rho must be in [0, 1]"),
        (["figures", "--focus", "99", "--out", "{out}"], "--focus 99: there are"),
        (["demo", "--tau", NAN], "tau must be positive"),
        (["summary", "{out}", "--n-boot", "0"], "n_boot must be >= 1"),
    ],
)
def test_nonsense_settings_are_refused_before_loading(refused, tmp_path, args, message):
    out = tmp_path / "run"
    result = refused.invoke(cli.app, [a.replace("{out}", str(out)) for a in args])
    _one_line_error(result, message)
    assert _files(tmp_path) == []  # no run folder, manifest or part file


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tau": math.nan}, "tau must be positive"),
        ({"tau": math.inf}, "tau must be positive"),
        ({"p": "0.5"}, r"p must be in \[0, 1\] \(a finite number\), got '0.5' \(str\)"),
        ({"rho": math.nan}, "rho must be in"),
        ({"p": True}, "bool"),
        ({"convention": "bogus"}, "convention must be one of paper, official"),
        ({"layers": (-1,)}, "layers entry must be >= 0"),
        ({"layers": "2"}, "sequence of layer indices"),
    ],
)
def test_var_config_validates_every_field(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        VarConfig(**kwargs)


def test_var_layers_beyond_the_model_are_refused(demo_model):
    inputs = build_inputs(demo_model, IMAGE, "Is there a red object?")
    with pytest.raises(ValueError, match="out of range"):
        VarIntervention(demo_model, inputs, dims=[1], config=VarConfig(layers=(99,)))


def test_check_settings_rules():
    assert check_settings(limit=None, batch_size=2.0, tau=1) == {
        "limit": None,
        "batch_size": 2,
        "tau": 1.0,
    }
    for bad in ({"level": 1.0}, {"max_new_tokens": 1.5}, {"seed": -1}, {"n_boot": math.inf}):
        with pytest.raises(ConfigError):
            check_settings(**bad)
    assert check_layers("layers", [0, 3], n_layers=4) == (0, 3)
    with pytest.raises(ConfigError, match=r"in \[0, 3\]"):
        check_layers("layers", [4], n_layers=4)


@pytest.mark.parametrize(
    "kwargs",
    [{"rho": math.nan}, {"tau": math.inf}, {"limit": -1}, {"limit": 0}, {"n_boot": 0}],
)
def test_evaluate_refuses_nonsense_before_creating_the_run(demo_model, tmp_path, kwargs):
    items = read_pope(QUESTIONS, IMAGES)
    out = tmp_path / "run"
    with pytest.raises(ConfigError):
        evaluate(demo_model, items, out=out, conditions="baseline", show_progress=False, **kwargs)
    assert not out.exists()


def test_manifest_is_strict_json(runner, tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(cli.app, ["eval", "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"{constant} in manifest.json")

    json.loads((out / "manifest.json").read_text(), parse_constant=refuse)


@pytest.mark.parametrize("bad_id", [math.nan, math.inf, True])
def test_unusable_question_ids_are_refused(bad_id):
    rows = [{"question_id": bad_id, "image": "demo_00.png", "text": "q?", "label": "yes"}]
    with pytest.raises(DatasetError, match=r"row 1: id .* is not usable"):
        items_from_records(rows, IMAGES)


def test_nan_id_in_a_questions_file(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"question_id": NaN, "image": "demo_00.png", "text": "q?"}\n')
    with pytest.raises(DatasetError, match="is not usable"):
        read_pope(questions, IMAGES)


def test_a_prompt_longer_than_the_context_is_refused(demo_model, monkeypatch):
    long_prompt = "word " * 10_000
    with pytest.raises(ValueError, match=r"longer than 2048.*max_position_embeddings"):
        build_inputs(demo_model, IMAGE, long_prompt)
    # --max-length overrides the limit either way.
    monkeypatch.setitem(demo_model.extra, MAX_LENGTH_KEY, 20_000)
    assert build_inputs(demo_model, IMAGE, long_prompt).input_ids.shape[1] > 10_000
    monkeypatch.setitem(demo_model.extra, MAX_LENGTH_KEY, 10)
    with pytest.raises(ValueError, match="the --max-length given"):
        build_inputs(demo_model, IMAGE, "Describe the image.")


def test_long_prompt_on_the_command_line(demo_model, tmp_path, monkeypatch):
    from analysis import loading

    monkeypatch.setattr(loading, "load_model", lambda *args, **kwargs: demo_model)
    monkeypatch.setitem(demo_model.extra, MAX_LENGTH_KEY, None)
    result = CliRunner().invoke(cli.app, ["sinks", "--prompt", "word " * 3000])
    _one_line_error(result, "longer than 2048")
    result = CliRunner().invoke(cli.app, ["sinks", "--max-length", "10"])
    _one_line_error(result, "longer than 10, the --max-length given")


# ============================================================ 2. late checks


def test_generate_var_p_out_of_range_refused_before_generating(refused):
    _one_line_error(refused.invoke(cli.app, ["generate", "--var", "--p", "1.5"]), "p must be in")


def _questions(tmp_path: Path, image: str) -> Path:
    questions = tmp_path / "q.jsonl"
    row = {"question_id": 1, "image": image, "text": "Is there a red object?", "label": "yes"}
    questions.write_text(json.dumps(row) + "\n")
    return questions


def test_a_corrupt_image_in_the_root_is_found_before_loading(refused, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    (root / "broken.png").write_bytes(IMAGE.read_bytes()[:200])  # truncated PNG
    args = ["--questions", str(_questions(tmp_path, "broken.png")), "--images", str(root)]
    result = refused.invoke(cli.app, ["eval", "--out", str(tmp_path / "run"), *args])
    _one_line_error(result, "broken.png")
    assert not (tmp_path / "run").exists()


# ============================================================ 3. file-system faults


def _read_only(monkeypatch, folder: Path) -> None:
    """Make ``folder`` behave like a read-only mount (the suite may run as root)."""
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(errno.EROFS, "Read-only file system", str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(fsio.tempfile, "mkstemp", mkstemp)


def test_out_is_a_file(refused, tmp_path):
    (tmp_path / "taken").write_text("mine")
    result = refused.invoke(cli.app, ["eval", "--out", str(tmp_path / "taken"), *QUICK])
    _one_line_error(result, "is a file, not a folder")
    assert (tmp_path / "taken").read_text() == "mine"


def test_out_on_a_read_only_mount(refused, tmp_path, monkeypatch):
    _read_only(monkeypatch, tmp_path)
    result = refused.invoke(cli.app, ["eval", "--out", str(tmp_path / "run"), *QUICK])
    _one_line_error(result, "Read-only file system")
    assert _files(tmp_path) == []


@pytest.mark.parametrize("option", ["--json", "--html"])
def test_json_or_html_to_a_folder_is_refused_before_the_work(refused, tmp_path, option):
    _one_line_error(
        refused.invoke(cli.app, ["sinks", option, str(tmp_path)]), "is a folder; give a file name"
    )


def test_json_to_an_unwritable_place(refused, tmp_path, monkeypatch):
    _read_only(monkeypatch, tmp_path)
    result = refused.invoke(cli.app, ["sinks", "--json", str(tmp_path / "sub" / "s.json")])
    _one_line_error(result, "cannot write in")


def test_disk_full_during_the_merge_keeps_the_records(runner, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert runner.invoke(cli.app, ["eval", "--out", str(out), *QUICK]).exit_code == 0
    before = {name: (out / name).read_bytes() for name in ("records.jsonl", "summary.json")}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "_flush_to_disk", full)
    _one_line_error(runner.invoke(cli.app, ["merge", str(out)]), "the disk is full")
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # no stray temp file
    assert {name: (out / name).read_bytes() for name in before} == before


def test_write_atomic_removes_its_temp_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    target = tmp_path / "a.json"
    fsio.write_atomic(target, "old")

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fsio, "_flush_to_disk", full)
    with pytest.raises(OSError, match="No space"):
        fsio.write_atomic(target, "new")
    assert target.read_text() == "old"
    assert _files(tmp_path) == ["a.json"]


def test_truncated_weights(tmp_path):
    broken = tmp_path / "model"
    shutil.copytree(DEMO_MODEL_DIR, broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="truncated or corrupt"):
        load_model(broken, device="cpu")
    _one_line_error(CliRunner().invoke(cli.app, ["info", str(broken)]), "Cannot load the weights")


def test_decompression_bomb(tmp_path, monkeypatch):
    path = tmp_path / "big.png"
    make_image(40, 40).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1600 pixels: over twice the limit
    with pytest.raises(ImageError, match="too large to decode safely"):
        load_image(path)


def test_load_model_bad_device_and_no_name():
    with pytest.raises(ValueError, match="Unknown device 'tpu'"):
        load_model(DEMO_MODEL_DIR, device="tpu")
    with pytest.raises(ModelLoadError, match="got None"):
        load_model(None)  # type: ignore[arg-type]
    _one_line_error(CliRunner().invoke(cli.app, ["info", "--device", "tpu"]), "Unknown device")


# ============================================================ 4. one run folder, one writer


def _sleeper() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def _write_lock(folder: Path, pid: int, host: str | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    owner = fsio.LockOwner.me()
    data = {**owner.__dict__, "pid": pid, "host": host or owner.host, "command": "vsink eval"}
    (folder / LOCK).write_text(json.dumps(data))


def test_a_live_lock_refuses_a_second_writer(refused, tmp_path):
    out = tmp_path / "run"
    other = _sleeper()
    try:
        _write_lock(out, other.pid)
        result = refused.invoke(cli.app, ["eval", "--out", str(out), *QUICK])
        _one_line_error(result, f"is in use by pid {other.pid}")
        assert "--force" in result.output
        assert _files(out) == [LOCK]
    finally:
        other.kill()
        other.wait()


def test_a_lock_from_another_host_needs_force(runner, tmp_path):
    out = tmp_path / "run"
    _write_lock(out, 1, host="elsewhere.invalid")
    result = runner.invoke(cli.app, ["eval", "--out", str(out), *QUICK])
    _one_line_error(result, "on another host")
    result = runner.invoke(cli.app, ["eval", "--out", str(out), *QUICK, "--force"])
    assert result.exit_code == 0, result.output
    assert "taking over" in result.output
    assert not (out / LOCK).exists()  # released at the end


def test_a_stale_lock_is_reported_and_taken_over(runner, tmp_path):
    out = tmp_path / "run"
    gone = _sleeper()
    gone.kill()
    gone.wait()
    _write_lock(out, gone.pid)
    result = runner.invoke(cli.app, ["eval", "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    assert f"warning: {out}: taking over the lock of pid {gone.pid}" in result.output
    assert "stale: not running" in result.output
    assert not (out / LOCK).exists()


def test_a_refused_lock_leaves_no_new_folder(tmp_path):
    lock = tmp_path / "new" / LOCK
    with fsio.exclusive_lock(lock) as owner, fsio.exclusive_lock(lock) as again:
        assert owner == again  # re-entrant in one process
    assert not (tmp_path / "new").exists()


def _eval_command(out: Path) -> list[str]:
    extra = ["--limit", "8", "--conditions", "baseline,ablate-sinks", "--dims", "337,771"]
    return [sys.executable, "-m", "analysis.cli", "eval", "--out", str(out), *QUICK, *extra]


@pytest.mark.slow
def test_two_concurrent_evals_on_one_folder(runner, tmp_path):
    shared, single = tmp_path / "shared", tmp_path / "single"
    first = subprocess.Popen(
        _eval_command(shared), cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        while not (shared / LOCK).exists() and first.poll() is None:
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.05)
        assert first.poll() is None, "the first run ended before the second could start"
        second = runner.invoke(cli.app, _eval_command(shared)[3:])
        _one_line_error(second, "is in use by pid")
    finally:
        _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr.decode()[-2000:]
    assert runner.invoke(cli.app, _eval_command(single)[3:]).exit_code == 0
    # Every record once: exactly what a single run writes.
    assert (shared / "records.jsonl").read_text() == (single / "records.jsonl").read_text()
    assert len(json.loads((shared / "manifest.json").read_text())["sessions"]) == 1


# ============================================================ 5. summary of a partial run


def test_summary_marks_a_partly_written_run_partial(runner, tmp_path):
    out = tmp_path / "run"
    args = ["eval", "--out", str(out), "--conditions", "baseline", "--max-new-tokens", "0"]
    result = runner.invoke(cli.app, [*args, "--batch-size", "8", "--no-stats", "--no-progress"])
    assert result.exit_code == 0, result.output
    part = out / "part-0.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    assert len(lines) == 32
    part.write_text("".join(lines[:11]) + lines[11][:40])  # 11 of 32 items, cut mid-line
    result = runner.invoke(cli.app, ["summary", str(out)])
    assert result.exit_code == 0, result.output
    assert "partial: 11 of 32 items present" in " ".join(result.output.split())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is False
    assert (summary["n_items"], summary["n_items_expected"]) == (11, 32)
    # While a writer holds the folder, the summary says it is a snapshot.
    writer = _sleeper()
    try:
        _write_lock(out, writer.pid)
        result = runner.invoke(cli.app, ["summary", str(out)])
        assert "still writing to this folder" in " ".join(result.output.split())
    finally:
        writer.kill()
        writer.wait()


# ============================================================ 6. SIGINT / SIGTERM


def test_an_interrupt_prints_one_line_and_the_rerun_resumes(runner, tmp_path, monkeypatch):
    from analysis.eval import run as evaluation

    out = tmp_path / "run"
    real = evaluation._run_batch
    calls = {"n": 0}

    def interrupted_after_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        yield from real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "_run_batch", interrupted_after_two)
    result = runner.invoke(cli.app, ["eval", "--out", str(out), *QUICK])
    assert result.exit_code == 130, result.output
    assert "interrupted: 2 records written" in result.output
    assert "rerun the same command to resume" in result.output
    assert "Traceback" not in result.output
    assert not (out / LOCK).exists()
    monkeypatch.setattr(evaluation, "_run_batch", real)
    result = runner.invoke(cli.app, ["eval", "--out", str(out), *QUICK])
    assert result.exit_code == 0, result.output
    assert len((out / "records.jsonl").read_text().splitlines()) == 4


@pytest.mark.slow
@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_a_real_run_with_one_line(tmp_path, signum, code):
    out = tmp_path / "run"
    command = _eval_command(out)
    command[command.index("8")] = "32"  # long enough to be caught mid-run
    run = subprocess.Popen(
        command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    part = out / "part-0.jsonl"
    deadline = time.monotonic() + 120
    while not (part.exists() and part.stat().st_size) and run.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    run.send_signal(signum)
    _, stderr = run.communicate(timeout=120)
    text = stderr.decode()
    assert run.returncode == code, text[-2000:]
    assert "interrupted:" in text
    assert "rerun the same command to resume" in text
    assert "Traceback" not in text
    assert not (out / LOCK).exists()


# ============================================================ 7. minor


def test_image_option_given_a_folder(refused):
    _one_line_error(refused.invoke(cli.app, ["sinks", "--image", str(IMAGES)]), "is a folder")


def test_animated_gif_is_refused(tmp_path):
    path = tmp_path / "anim.gif"
    frames = [make_image(seed=i) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:])
    with pytest.raises(ImageError, match=r"animated \(3 frames\)"):
        load_image(path)


def test_build_inputs_on_a_folder(demo_model):
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        build_inputs(demo_model, IMAGES, "Describe the image.")


def test_non_utf8_questions_name_the_file_and_line(tmp_path, refused):
    questions = tmp_path / "q.jsonl"
    good = json.dumps({"question_id": 1, "image": "demo_00.png", "text": "q?"})
    questions.write_bytes(good.encode() + b"\n" + '{"text": "caf\xe9"}'.encode("latin-1") + b"\n")
    with pytest.raises(DatasetError, match=rf"{questions.name}:2: not UTF-8"):
        read_pope(questions, IMAGES)
    args = ["eval", "--out", str(tmp_path / "run"), "--questions", str(questions)]
    _one_line_error(refused.invoke(cli.app, [*args, "--images", str(IMAGES)]), "q.jsonl:2")


# ============================================================ 8. markup in model text


def test_generated_text_with_brackets_is_printed(runner, monkeypatch):
    from analysis import generation

    answer = "[word] is [bold]not[/bold] a style"
    monkeypatch.setattr(
        generation, "generate", lambda *args, **kwargs: SimpleNamespace(texts=[answer])
    )
    result = runner.invoke(cli.app, ["generate", "--max-new-tokens", "1"])
    assert result.exit_code == 0, result.output
    assert f"baseline: {answer}" in result.output


def test_error_lines_keep_brackets(refused, tmp_path):
    missing = tmp_path / "photo[red].png"
    _one_line_error(refused.invoke(cli.app, ["sinks", "--image", str(missing)]), "photo[red].png")


# ============================================================ 9. no install at run time


@pytest.fixture
def record_installs(monkeypatch):
    """Every way TransformerLens (or anything) could shell out, recorded instead of run."""
    calls: list = []

    def record(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"a subprocess was started: {args}")

    for name in ("check_call", "check_output", "run", "call", "Popen"):
        monkeypatch.setattr(subprocess, name, record)
    monkeypatch.setattr(os, "system", record)
    return calls


def test_loading_never_installs_anything(record_installs, monkeypatch):
    import transformers

    real = transformers.AutoProcessor.from_pretrained
    seen: list = []

    def only_once(*args, **kwargs):
        seen.append(args)
        if len(seen) > 1:  # what TransformerLens' own load attempt would meet
            raise ImportError("LlavaProcessor requires the torchvision library")
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", only_once)
    loaded = load_model(DEMO_MODEL_DIR, device="cpu")
    assert record_installs == []
    assert len(seen) == 1  # the bridge was handed our processor, it loaded none itself
    assert loaded.bridge.processor is loaded.processor


def test_a_processor_that_needs_torchvision_is_a_clear_error(record_installs, monkeypatch):
    import transformers

    def needs_torchvision(*args, **kwargs):
        raise ImportError("LlavaProcessor requires the torchvision library")

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", needs_torchvision)
    with pytest.raises(ModelLoadError, match="never installs packages"):
        load_model(DEMO_MODEL_DIR, device="cpu")
    assert record_installs == []
