"""Bad input to the `interp` command: exit code 2 and one line on stderr that names the fix, never a
traceback or "error: internal", and options and output destinations refused before the model loads.

`test_every_command_checks_destinations_first` walks the registered subcommands, so a new command
inherits the check of the common options without being listed here.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import os
import shutil
from pathlib import Path

import pytest

from interp.cli import build_parser, main

M = ["--model", "tiny-llama"]
TRAIN = ["sae", "train", *M, "--hook", "blocks.1.hook_resid_post"]
EDIT = ["edit", *M, "--subject", "Paris", "--prompt", "{} is the capital of", "--target", " Rome"]
RECORD = {"case_id": 1, "requested_rewrite": {"prompt": "{} is the capital of", "subject": "Paris",
                                              "target_new": {"str": " Rome"}, "target_true": {"str": " France"}}}


def visible_lines(err: str) -> list[str]:
    """The non-empty lines a terminal shows (a progress bar redraws itself with carriage returns)."""
    return [line.rsplit("\r", 1)[-1] for line in err.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def run_bad(capsys, argv: list[str]) -> str:
    """Run `argv`, assert exit 2 with exactly one error line and nothing on stdout; return the line."""
    code = main(argv)
    out, err = capsys.readouterr()
    lines = visible_lines(err)
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "error: internal" not in err and out == ""
    return lines[0]


@pytest.fixture
def forbid(monkeypatch):
    """forbid("module.attr"): make calling it fail the test (an AssertionError surfaces as exit 1)."""
    def block(target: str) -> None:
        def refuse(*args, **kwargs):
            raise AssertionError(f"{target} was called before the bad input was refused")
        module, name = target.rsplit(".", 1)
        monkeypatch.setattr(importlib.import_module(module), name, refuse)  # a package may shadow the module
    return block


def readonly_folder(tmp_path: Path) -> Path:
    """A folder in which nothing can be created (root ignores permission bits, so then a /sys path)."""
    if os.geteuid() != 0:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    try:
        (Path("/sys") / "interp-test").mkdir()
    except OSError:
        return Path("/sys")
    pytest.skip("no read-only location on this machine")


@pytest.fixture(scope="module")
def sae_dir(tmp_path_factory) -> Path:
    """A trained tiny SAE folder (a few hundred steps' worth of tokens: seconds)."""
    from interp.models import load_model
    from interp.sae import TrainConfig, train

    out = tmp_path_factory.mktemp("sae") / "topk"
    cfg = TrainConfig(hook="blocks.1.hook_resid_post", k=4, width=64, tokens=1024, batch_tokens=128, lm_batch_size=8,
                      seq_len=64, buffer_tokens=512, norm_tokens=256, checkpoint_every=0, progress=False,
                      model="tiny-llama")
    train(load_model("tiny-llama"), cfg, out)
    return out


def sae_variant(sae_dir: Path, dest: Path, edit) -> Path:
    """A copy of `sae_dir` whose cfg.json was changed by `edit(cfg)`."""
    shutil.copytree(sae_dir, dest)
    cfg = json.loads((dest / "cfg.json").read_text())
    edit(cfg)
    (dest / "cfg.json").write_text(json.dumps(cfg))
    return dest


@pytest.fixture
def paths(tmp_path, sae_dir) -> dict[str, str]:
    """Placeholders of the table: bad files and destinations under tmp_path."""
    (tmp_path / "file").write_text("x")
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "kept").write_text("x")
    latin1 = b'{"text": "caf\xe9"}\n'
    (tmp_path / "latin1.jsonl").write_bytes(latin1)
    (tmp_path / "latin1.csv").write_bytes(b"text,label\ncaf\xe9,1\n")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    no_true = json.loads(json.dumps(RECORD))
    del no_true["requested_rewrite"]["target_true"]
    (tmp_path / "no_true.jsonl").write_text(json.dumps(no_true) + "\n")
    wrong = json.loads(json.dumps(RECORD))
    wrong["requested_rewrite"]["target_true"] = {"str": 7}
    (tmp_path / "wrong_types.jsonl").write_text(json.dumps(wrong) + "\n")
    features = tmp_path / "ws" / "sae_features" / "taken"
    features.mkdir(parents=True)
    (features / "sae.json").write_text("{}")
    big_k = sae_variant(sae_dir, tmp_path / "big_k", lambda cfg: cfg.update(k=100_000))
    text_norm = sae_variant(sae_dir, tmp_path / "text_norm", lambda cfg: cfg["metadata"].update(max_norm="big"))
    return {"tmp": str(tmp_path), "ro": str(readonly_folder(tmp_path)), "sae": str(sae_dir),
            "big_k": str(big_k), "text_norm": str(text_norm)}


# (argv, words the line must contain, what must not run first: "model" = no model loads, else a dotted name)
CASES = [
    # usage errors: one line, the command's --help named
    (["lens", *M], "see interp lens --help", "model"),
    (["lens", "x", *M, "--no-such-flag"], "--no-such-flag", "model"),
    (["no-such-command"], "invalid choice", "model"),
    (["sae"], "required", "model"),
    (["lens", "x", *M, "--top", "abc"], "--top", "model"),
    # numbers out of range, inf and nan, at parse time
    (["lens", "x", *M, "--top", "0"], "--top", "model"),
    (["probe", "--dataset", "cities", *M, "--batch-size", "0"], "--batch-size", "model"),
    (["probe", "--dataset", "cities", *M, "--batch-size", "-3"], "--batch-size", "model"),
    (["probe", "--dataset", "cities", *M, "--folds", "1"], "--folds", "model"),
    (["probe", "--dataset", "cities", *M, "--steer", "--alpha", "nan"], "--alpha", "model"),
    (["probe", "--dataset", "cities", *M, "--steer", "--steer-n", "0"], "--steer-n", "model"),
    (["outliers", "hi", *M, "--seq-len", "0"], "--seq-len", "model"),
    (["outliers", "hi", *M, "--sink-threshold", "1.5"], "--sink-threshold", "model"),
    (["outliers", "hi", *M, "--abs-threshold", "inf"], "--abs-threshold", "model"),
    ([*TRAIN, "--out", "{tmp}/o", "--lr", "inf"], "--lr", "model"),
    ([*TRAIN, "--out", "{tmp}/o", "--sparsity-coefficient", "nan"], "--sparsity-coefficient", "model"),
    ([*TRAIN, "--out", "{tmp}/o", "--k", "0"], "--k", "model"),
    ([*TRAIN, "--out", "{tmp}/o", "--k", "100000", "--width", "64"], "--k", "model"),
    ([*TRAIN, "--out", "{tmp}/o", "--k", "100000"], "--k", None),  # the width follows from the model's
    (["sae", "eval", "{sae}", *M, "--tokens", "0"], "--tokens", "model"),
    (["sae", "features", "{sae}", *M, "--top", "0"], "--top", "model"),
    (["trace", "x is", *M, "--subject", "x", "--noise", "inf"], "--noise", "model"),
    (["trace", "x is", *M, "--subject", "x", "--samples", "0"], "--samples", "model"),
    ([*EDIT, "--generations", "-1"], "--generations", "model"),
    (["dashboard", "--workspace", "{tmp}", "--port", "70000"], "--port", "model"),
    # devices and the environment
    (["lens", "x", *M, "--device", "cpux"], "--device", "model"),
    (["lens", "x", *M, "--device", "cuda:99"], "cuda:99", "model"),
    (["lens", "caf\udce9", *M], "UTF-8", "model"),
    # output destinations, before the model loads
    (["lens", "x", *M, "--html", "{tmp}"], "is a folder", "model"),
    (["lens", "x", *M, "--html", "/nonexistent/x.html"], "does not exist", "model"),
    (["lens", "x", *M, "--html", "{tmp}/figure"], ".html", "model"),
    (["lens", "x", *M, "--html", ""], "--html", "model"),
    (["lens", "x", *M, "--workspace", "{tmp}/file"], "is a file", "model"),
    (["lens", "x", *M, "--workspace", "{tmp}/file/ws"], "is a file", "model"),
    (["lens", "x", *M, "--workspace", "{ro}/ws", "--json"], "--workspace", "model"),
    ([*TRAIN, "--out", "{tmp}/file"], "is a file", "model"),
    ([*TRAIN, "--out", "{tmp}/nonempty"], "--resume", "model"),
    ([*TRAIN, "--out", "{ro}/run"], "--out", "model"),
    ([*EDIT, "--save", "{tmp}/nonempty"], "not empty", "model"),
    ([*EDIT, "--save", "{tmp}/file"], "is a file", "model"),
    (["sae", "features", "{sae}", *M, "--workspace", "{tmp}/ws", "--name", "taken"], "--force", "model"),
    (["sae", "features", "{tmp}/taken", *M, "--workspace", "{tmp}/ws"], "--force", "model"),  # default name
    (["dashboard", "--workspace", "{tmp}", "--html", "{tmp}/x.html"], "does not apply", "model"),
    # unreadable user files
    (["edit", *M, "--requests", "{tmp}/latin1.jsonl"], "save it as UTF-8", "model"),
    (["trace", *M, "--facts", "{tmp}/latin1.jsonl"], "save it as UTF-8", "model"),
    (["trace", *M, "--facts", "{tmp}/no_true.jsonl"], "target_true", "model"),
    (["trace", *M, "--facts", "{tmp}/wrong_types.jsonl"], "target_true", "model"),
    (["probe", "--dataset", "{tmp}/latin1.csv", *M], "save it as UTF-8", "model"),
    (["outliers", *M, "--corpus", "{tmp}/latin1.jsonl", "--tokens", "64", "--ppl-tokens", "0"], "save it as UTF-8",
     None),
    (["outliers", *M, "--corpus", "{tmp}/garbage.parquet", "--ppl-tokens", "0"], "Parquet", None),
    (["outliers", *M, "--by-domain", "--corpus", "{tmp}/latin1.jsonl"], "save it as UTF-8", "model"),
    (["outliers", "hi", *M, "--by-domain"], "drop the prompts", "model"),
    (["sae", "eval", "{big_k}", *M], "k must be", "model"),
    (["sae", "eval", "{text_norm}", *M], "max_norm", "model"),
    # probe --steer settings, before the sweep
    (["probe", "--dataset", "cities", *M, "--layers", "1", "--steer", "--steer-method", "nope"], "nope",
     "probes.sweep.probe_layers"),
    (["probe", "--dataset", "cities", *M, "--layers", "1", "--steer", "--answers", " True"], "answers",
     "probes.sweep.probe_layers"),
]


@pytest.mark.parametrize("argv, words, first", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line_exit_2(capsys, forbid, paths, argv, words, first):
    if first is not None:
        forbid("interp.models.load_model" if first == "model" else first)
    line = run_bad(capsys, [a.format(**paths) if "{" in a and "{}" not in a else a for a in argv])
    assert words in line


@pytest.mark.parametrize("value", ["abc", "0", "-2"])
def test_bad_interp_threads(capsys, forbid, monkeypatch, value):
    forbid("interp.models.load_model")
    monkeypatch.setenv("INTERP_THREADS", value)
    assert "INTERP_THREADS" in run_bad(capsys, ["info", *M])


def test_full_disk_is_refused_before_the_work(capsys, forbid, monkeypatch, tmp_path):
    forbid("interp.models.load_model")
    full = os.statvfs(tmp_path)
    monkeypatch.setattr(os, "statvfs", lambda path: os.statvfs_result((*full[:4], 0, *full[5:])))
    assert "disk is full" in run_bad(capsys, [*TRAIN, "--out", str(tmp_path / "run")])


def test_user_file_errors_during_the_work_exit_2(capsys, monkeypatch):
    """A disk that fills up while a command runs (no destination check can foresee it) is the user's
    problem to fix, not an internal error."""
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoint.safetensors")
    monkeypatch.setattr("interp.lens.logit_lens", disk_full)
    assert "free some space" in run_bad(capsys, ["lens", "x", *M])


def test_bugs_still_say_internal_and_exit_1(capsys, monkeypatch):
    def bug(*args, **kwargs):
        raise KeyError("oops")
    monkeypatch.setattr("interp.lens.logit_lens", bug)
    code = main(["lens", "x", *M])
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: internal KeyError") and len(visible_lines(err)) == 1


def leaf_commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()):
    """(command words, parser) for every runnable subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from leaf_commands(sub, (*prefix, name))
            return
    yield prefix, parser


def minimal_argv(words: tuple[str, ...], parser: argparse.ArgumentParser) -> list[str]:
    """`words` plus a placeholder for every required argument, so that parsing succeeds."""
    argv = list(words)
    for action in parser._actions:
        positional = not action.option_strings and action.nargs not in ("?", "*", 0)
        if positional:
            argv.append("x")
        elif action.required and action.option_strings:
            argv += [action.option_strings[0], "x"]
    return argv


COMMANDS = list(leaf_commands(build_parser()))


@pytest.mark.parametrize("words, parser", COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
@pytest.mark.parametrize("option, value, words_in_line", [
    ("--html", "/nonexistent/x.html", "--html"),
    ("--workspace", "{tmp}/file", "--workspace"),
])
def test_every_command_checks_destinations_first(capsys, forbid, monkeypatch, tmp_path, words, parser, option, value,
                                                 words_in_line):
    forbid("interp.models.load_model")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("x")
    argv = [*minimal_argv(words, parser), *M, option, value.format(tmp=tmp_path)]
    assert words_in_line in run_bad(capsys, argv)


@pytest.mark.parametrize("words, parser", COMMANDS, ids=[" ".join(w) for w, _ in COMMANDS])
def test_every_numeric_option_is_checked(words, parser):
    """Numbers go through interp.cli.types (a range, and finite), never bare int or float: argparse's float
    takes 'nan' and 'inf', and an int without a range lets 0 or -3 through to the analysis."""
    assert [a.option_strings or a.dest for a in parser._actions if a.type in (int, float)] == []


def test_sae_features_replaces_a_feature_set_only_with_force(capsys, sae_dir, tmp_path):
    argv = ["sae", "features", str(sae_dir), *M, "--workspace", str(tmp_path), "--top", "2", "--quantiles", "1",
            "--per-quantile", "1", "--batch-size", "4"]
    info = tmp_path / "sae_features" / sae_dir.name / "sae.json"
    assert main([*argv, "--tokens", "1024"]) == 0
    first = json.loads(info.read_text())["n_tokens"]
    capsys.readouterr()
    assert "--force" in run_bad(capsys, [*argv, "--tokens", "2048"])
    assert json.loads(info.read_text())["n_tokens"] == first
    assert main([*argv, "--tokens", "2048", "--force"]) == 0 and json.loads(info.read_text())["n_tokens"] > first
