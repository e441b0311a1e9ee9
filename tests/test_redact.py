"""Secrets never reach the store or error messages."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from support.llm_stub import http_error, serve, tool_call

from haqa.agents.runtime import ROLE_INVALID
from haqa.errors import HaqaError
from haqa.redact import REDACTED, redact
from haqa.store import Store, TrialResult, utcnow

KEY = "sk-live-0123456789abcdefSECRET"


def test_env_secrets_and_key_shapes_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MY_TOKEN", "tok-abcdefgh-12345")
    assert redact(f"auth failed for {KEY}") == f"auth failed for {REDACTED}"
    assert "tok-abcdefgh-12345" not in redact("token tok-abcdefgh-12345 expired")
    assert REDACTED in redact("Authorization: Bearer abcdefghijklmnop")
    assert REDACTED in redact("leaked sk-otherkey12345678 here")
    assert redact("learning_rate=0.001, n_threads=2") == "learning_rate=0.001, n_threads=2"


def test_store_and_errors_never_hold_the_key(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    run = store.create_run(model="m", brain="openai", config={"note": f"key={KEY}"})
    store.add_message(
        run.run_id,
        agent="tuner",
        role=ROLE_INVALID,
        content=f"AuthenticationError: Incorrect API key provided: {KEY}",
        tool_args={"headers": {"Authorization": f"Bearer {KEY}"}},
    )
    now = utcnow()
    rec = store.add_trial(
        run.run_id,
        TrialResult(
            stage="deploy",
            tool="deploy_trial",
            config={"k": KEY},
            status="failed",
            error=f"server said {KEY}",
            started_at=now,
            finished_at=now + timedelta(seconds=1),
        ),
    )
    assert KEY not in rec.model_dump_json()
    assert KEY not in store.path.read_bytes().decode("latin-1")
    dump = store.list_messages(run.run_id)[0].model_dump_json()
    dump += store.list_trials(run.run_id)[0].model_dump_json()
    dump += store.get_run(run.run_id).model_dump_json()
    assert KEY not in dump and REDACTED in dump
    with pytest.raises(HaqaError) as info:
        raise HaqaError(f"endpoint refused key {KEY}")
    assert KEY not in str(info.value)


@pytest.mark.slow
def test_an_openai_run_from_the_cli_leaks_the_key_nowhere(tiny_model: Path, tmp_path: Path) -> None:
    """A whole `haqa run --brain openai` in a child process, the endpoint answering first with a
    401 that echoes the key back (as hosted APIs do): the key reaches the server, and then
    appears in none of the store file, the report folder, the run's console output (its log),
    or any text file the run left under HAQA_HOME."""
    key = "sk-proj-FAKEKEY-0123456789-findme"
    script = [
        http_error(401, "Incorrect API key provided: {key}. You can find your API key at ..."),
        tool_call("propose_trial", {"config": {"quant_type": "Q8_0"}, "thought": "safe"}),
        tool_call("finish", {"thought": "done"}),
    ]
    toml = tmp_path / "run.toml"
    db, reports = tmp_path / "haqa.duckdb", tmp_path / "reports"
    with serve(script) as stub:
        toml.write_text(
            "\n".join(
                [
                    'brain = "openai"',
                    f'llm_base_url = "{stub.url}"',
                    'llm_model = "stub-model"',
                    "eval_limit = 20",
                    "n_prompt = 32",
                    "n_gen = 8",
                    "repetitions = 1",
                    "quick_analysis = true",
                    "max_accuracy_drop = 10.0",
                    "[budgets]",
                    "finetune_trials = 0",
                    "deploy_trials = 1",
                    "[measurement]",
                    "anchor_every = 0",
                ]
            )
        )
        env = {**os.environ, "OPENAI_API_KEY": key, "HAQA_HOME": str(tiny_model.parents[1])}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "haqa",
                "run",
                "--config",
                str(toml),
                "--db",
                str(db),
                "--report-dir",
                str(reports),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    sent = [v for h in stub.headers for k, v in h.items() if k.lower() == "authorization"]
    assert sent and all(key in v for v in sent)  # real HTTP carried it
    assert "AuthenticationError" in done.stdout + done.stderr  # the 401 was seen and reported
    assert key not in done.stdout and key not in done.stderr
    assert REDACTED in done.stdout + done.stderr
    assert key.encode() not in db.read_bytes()
    report_files = [p for p in reports.rglob("*") if p.is_file()]
    assert any(p.name == "report.md" for p in report_files)
    for path in [*report_files, *_text_files(tiny_model.parents[1])]:
        assert key.encode() not in path.read_bytes(), path


def _text_files(root: Path) -> list[Path]:
    """Small files under ``root`` (logs, JSON, Markdown): weights and GGUFs are left out."""
    return [
        p
        for p in root.rglob("*")
        if p.is_file() and p.stat().st_size < 4 << 20 and p.suffix not in (".gguf", ".safetensors")
    ]
