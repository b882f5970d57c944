"""logger=wandb with a key on a node that cannot reach the W&B server (a cluster compute node): offline logging
said in one line, or with WANDB_MODE=online one line at start-up; never minutes of waiting for CommError.

The unreachable server is a closed port on 127.0.0.1 (refused at once): no real network is used.
"""

from __future__ import annotations

import http.server
import logging
import threading
from types import SimpleNamespace

import pytest

from medvl.config import ConfigError
from medvl.evaluation import wandb_session
from medvl.training import loggers

from .conftest import PROXY_VARS, small_data_overrides, unreachable_wandb_server

KEY = "0123456789abcdef0123456789abcdef01234567"  # a W&B-key-shaped fake


@pytest.fixture
def unreachable_wandb(no_wandb_login, monkeypatch):  # noqa: F811
    """A W&B key, and a W&B server nobody listens on."""
    with unreachable_wandb_server(monkeypatch, KEY) as host:
        yield host


@pytest.fixture
def answering_wandb(no_wandb_login, monkeypatch):  # noqa: F811
    """A local server that answers every request with 401, as api.wandb.ai does without a valid key."""

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's naming
            self.send_response(401)
            self.end_headers()

        def log_message(self, *args):
            pass

    for var in PROXY_VARS:
        monkeypatch.delenv(var, raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), Refuse)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.server_address[1]}")
    yield
    server.shutdown()
    server.server_close()


def test_unreachable_server_means_offline(unreachable_wandb):
    assert not wandb_session.wandb_reachable()
    assert wandb_session.wandb_host() == unreachable_wandb
    reason = wandb_session.wandb_offline_reason()
    assert reason == f"the W&B server {unreachable_wandb} cannot be reached from this node"


def test_a_server_that_answers_is_reachable_even_with_an_error_status(answering_wandb, monkeypatch):
    assert wandb_session.wandb_reachable()
    monkeypatch.setenv("WANDB_API_KEY", KEY)
    assert wandb_session.wandb_offline_reason() is None  # online: wandb.init goes ahead as before


def test_without_a_key_no_server_is_contacted(no_wandb_login, monkeypatch):  # noqa: F811
    monkeypatch.setattr(wandb_session, "wandb_reachable", lambda *a, **k: pytest.fail("contacted the server"))
    assert wandb_session.wandb_offline_reason() == "no API key found"
    monkeypatch.setenv("WANDB_MODE", "offline")  # the user's choice: nothing to decide
    assert wandb_session.wandb_offline_reason() is None


def test_wandb_mode_online_on_an_unreachable_node_is_one_line(unreachable_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    with pytest.raises(ConfigError) as err:
        wandb_session.wandb_offline_reason()
    msg = str(err.value)
    assert "\n" not in msg and KEY not in msg
    assert msg.startswith(f"WANDB_MODE=online but the W&B server {unreachable_wandb} cannot be reached")
    assert "set WANDB_MODE=offline" in msg and "wandb sync" in msg


def test_wandb_mode_online_stops_training_before_the_model_loads(compose, small_synth, unreachable_wandb,
                                                                  monkeypatch, tmp_path):
    from medvl.training import run

    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setattr("medvl.models.loading.load_model", lambda *a, **k: pytest.fail("the model loaded first"))
    cfg = compose([*small_data_overrides(small_synth), "logger=wandb", "trainer.max_steps=1"], output_dir=tmp_path)
    with pytest.raises(ConfigError, match="WANDB_MODE=offline"):
        run.train(cfg)


def test_unreachable_server_logs_offline_with_one_line_and_no_secret(compose, unreachable_wandb, tmp_path, caplog):
    import wandb

    out = tmp_path / "run"
    cfg = compose(["logger=wandb"], output_dir=out)
    (run_cb,) = [cb for cb in loggers.logger_callbacks(cfg, out) if isinstance(cb, loggers.WandbRun)]
    assert run_cb.init_kwargs["mode"] == "offline"
    with caplog.at_level(logging.INFO, logger="medvl"):
        run_cb.on_init_end(None, SimpleNamespace(is_world_process_zero=True), None)
    run_cb.finish()
    wandb.teardown()
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    lines = [r.getMessage() for r in caplog.records if "W&B" in r.getMessage()]
    assert lines == [f"W&B: the W&B server {unreachable_wandb} cannot be reached from this node; logging offline "
                     f"to {run_dir} (sync later with `wandb sync {run_dir}`)"]
    assert KEY not in caplog.text
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path
