"""The command line: --json prints one object, bad input prints one line and exits 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from interp.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json(capsys):
    code, out, _ = run(capsys, "info", "--model", "tiny-llama", "--json")
    info = json.loads(out)
    assert code == 0 and info["n_layers"] == 3 and info["n_kv_heads"] == 2 and info["hooks"] == []
    code, out, _ = run(capsys, "info", "--model", "tiny-llama", "--hooks", "--json")
    assert "blocks.2.hook_resid_post" in json.loads(out)["hooks"]


def test_lens_json_and_workspace(capsys, tmp_path):
    code, out, err = run(capsys, "lens", "The cat", "--model", "tiny-gpt2", "--json", "--workspace", str(tmp_path))
    payload = json.loads(out)
    assert code == 0 and payload["kind"] == "lens" and len(payload["answer_prob"]) == 4
    assert (tmp_path / "lens").is_dir() and payload["saved"].startswith(str(tmp_path))


def test_bad_input_is_one_line_exit_2(capsys):
    for argv in (["info", "--model", "no-such-model"], ["lens", "", "--model", "tiny-llama"],
                 ["lens", "hi", "--model", "tiny-llama", "--target", ""]):
        code, out, err = run(capsys, *argv)
        assert code == 2 and out == ""
        assert err.startswith("error: ") and err.count("\n") == 1, err


def test_console_script_and_module_entry_point():
    for cmd in (["interp"], [sys.executable, "-m", "interp"]):
        if cmd == ["interp"]:
            cmd = [str(__import__("pathlib").Path(sys.executable).with_name("interp"))]
        proc = subprocess.run([*cmd, "info", "--model", "tiny-llama", "--json"], capture_output=True, text=True,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["model"] == "tiny-llama"


def test_a_failed_save_still_prints_the_result(capsys, monkeypatch, tmp_path):
    """The disk fills up while the result is written: the JSON still comes out, then one error line, exit 2."""
    import errno

    from interp.results import Result

    def disk_full(self, folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "result.json"))
    monkeypatch.setattr(Result, "write", disk_full)
    code, out, err = run(capsys, "lens", "The cat", "--model", "tiny-llama", "--json", "--workspace", str(tmp_path))
    assert code == 2 and json.loads(out)["kind"] == "lens" and "saved" not in json.loads(out)
    assert err.count("\n") == 1 and err.startswith("error: ") and "free some space" in err
    assert not [p for p in (tmp_path / "lens").iterdir()]  # no half result, no reserved name left behind


def test_several_figures_get_distinct_html_files(capsys, tmp_path):
    target = tmp_path / "knock.html.d" / "trace.html"  # '.html' also inside the folder name
    target.parent.mkdir()
    code, _, err = run(capsys, "trace", "The Eiffel Tower is in", "--subject", "Eiffel Tower", "--model", "tiny-llama",
                       "--samples", "2", "--kind", "hidden", "--knockout", "--html", str(target))
    assert code == 0, err
    assert sorted(p.name for p in target.parent.iterdir()) == ["trace-0.html", "trace-1.html"]


def test_html_paths():
    from interp.cli.outputs import html_paths

    assert html_paths("a.b/x.html", 1) == [Path("a.b/x.html")]
    assert html_paths("a.html/x.html", 2) == [Path("a.html/x-0.html"), Path("a.html/x-1.html")]
    assert html_paths("fig", 2) == [Path("fig-0"), Path("fig-1")]


def test_destination_checks_leave_no_folders_behind_but_keep_the_workspace(tmp_path):
    """`--out` is only tried (made and removed); the workspace is made, so `--html` may point into it."""
    from interp.cli import build_parser
    from interp.cli.outputs import check_outputs

    args = build_parser().parse_args(["sae", "train", "--hook", "h", "--out", str(tmp_path / "a" / "b" / "run"),
                                      "--workspace", str(tmp_path / "ws"), "--html", str(tmp_path / "ws" / "f.html")])
    check_outputs(args)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ws"] and not any((tmp_path / "ws").iterdir())


def test_saves_never_collide(tmp_path):
    """Same name, same second, eight threads at once: eight folders, each a complete result."""
    import threading

    from interp.lens import logit_lens
    from interp.models import load_model
    from interp.results import Result
    from interp.workspace import Workspace

    result = logit_lens(load_model("tiny-llama"), "The cat")
    ws = Workspace(tmp_path / "ws")
    untimed = [ws.save(result), ws.save(result)]  # default names are the time to the second
    barrier, saved, errors = threading.Barrier(8), [], []

    def save():
        barrier.wait()
        try:
            saved.append(ws.save(result, "same name"))
        except Exception as e:  # noqa: BLE001 - collected for the assertion
            errors.append(e)
    threads = [threading.Thread(target=save) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(saved)) == 8 and untimed[0] != untimed[1]
    assert {p.name for p in saved} == {"same-name", *(f"same-name-{n}" for n in range(2, 9))}
    for folder in [*saved, *untimed]:
        assert Result.read(folder).kind == "lens"
    assert len(ws.entries("lens")) == 10
