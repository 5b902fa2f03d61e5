"""The command line: --json prints one object, bad input prints one line and exits 2."""

from __future__ import annotations

import json
import subprocess
import sys

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
