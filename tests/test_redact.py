"""Secrets never reach the store or error messages."""

from __future__ import annotations

from datetime import timedelta

import pytest

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
        role="invalid",
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
