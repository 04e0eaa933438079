"""`revelio demo` start-up: which model it loads, what it says, and how it fails (no server is started)."""
from __future__ import annotations

import pytest

from revelio_svc.app.serve import demo
from revelio_svc.config import load_config

from .conftest import free_port


def _cfg(**demo):
    """The config `revelio demo --demo.KEY VALUE ...` would load."""
    return load_config(None, [f"demo.{k}={v}" for k, v in demo.items()])


@pytest.fixture()
def fake_launch(monkeypatch):
    """Record what `demo` would serve instead of serving it (serving blocks until interrupted)."""
    import revelio_svc.app.main

    calls = []
    monkeypatch.setattr(revelio_svc.app.main, "launch", lambda clf, **kw: calls.append((clf, kw)))
    monkeypatch.delenv("REVELIO_DEMO_USER", raising=False)
    monkeypatch.delenv("REVELIO_DEMO_PASSWORD", raising=False)
    return calls


def test_unreachable_tracking_server_names_the_uri_and_the_offline_route(monkeypatch, capsys, fake_launch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    rc = demo(_cfg())
    err = capsys.readouterr().err
    assert rc == 1 and not fake_launch
    assert dead in err and "revelio-classifier@champion" in err
    assert "revelio registry pull revelio-classifier@champion --dest DIR" in err
    assert "revelio demo --model DIR" in err
    assert "Traceback" not in err


def test_empty_registry_says_no_model_is_registered(mlflow_tmp, capsys, fake_launch):
    rc = demo(_cfg(model="revelio-classifier@champion"))
    err = capsys.readouterr().err
    assert rc == 1 and not fake_launch
    assert "no registered model named 'revelio-classifier'" in err or "no MLflow tracking store" in err
    assert mlflow_tmp in err


def test_missing_directory_is_a_clear_error(tmp_path, capsys, fake_launch):
    rc = demo(_cfg(model=str(tmp_path / "nowhere")))
    err = capsys.readouterr().err
    assert rc == 1 and "nowhere" in err and not fake_launch


def test_pulled_directory_is_served_on_loopback_with_the_defaults(tiny_model_dir, capsys, fake_launch):
    rc = demo(_cfg(model=str(tiny_model_dir)))
    err = capsys.readouterr().err
    assert rc == 0 and len(fake_launch) == 1
    clf, kw = fake_launch[0]
    assert kw["host"] == "127.0.0.1" and kw["port"] == 7860 and kw["auth"] is None
    assert kw["concurrency"] == 2 and kw["max_pixels"] == 16_000_000
    assert clf.hook_point == "up_blocks.1" and clf.timestep == 10
    assert f"serving {tiny_model_dir}" in err and "hook point up_blocks.1 · t=10" in err


def test_host_port_auth_and_limits_come_from_options_and_environment(tiny_model_dir, monkeypatch, fake_launch):
    from revelio_svc.cli.main import build_parser, load

    monkeypatch.setenv("REVELIO_DEMO_USER", "ada")
    monkeypatch.setenv("REVELIO_DEMO_PASSWORD", "s3cret")
    args = build_parser().parse_args(["demo", "--model", str(tiny_model_dir), "--host", "0.0.0.0", "--port", "9001",
                                      "--demo.concurrency", "3", "--set", "demo.max_pixels=1000000"])
    rc = demo(load(args), args)
    assert rc == 0
    _, kw = fake_launch[0]
    assert (kw["host"], kw["port"], kw["auth"]) == ("0.0.0.0", 9001, ("ada", "s3cret"))
    assert kw["concurrency"] == 3 and kw["max_pixels"] == 1_000_000


def test_half_configured_auth_refuses_to_start(tiny_model_dir, monkeypatch, capsys, fake_launch):
    monkeypatch.setenv("REVELIO_DEMO_USER", "ada")
    rc = demo(_cfg(model=str(tiny_model_dir)))
    assert rc == 2 and not fake_launch
    assert "REVELIO_DEMO_PASSWORD is not set" in capsys.readouterr().err


def test_registered_champion_is_served_and_its_version_is_shown(mlflow_tmp, tiny_model_dir, fake_launch):
    import mlflow

    from revelio_svc.app.service import model_info
    from revelio_svc.app.views import model_markdown
    from revelio_svc.registry import register_model

    with mlflow.start_run():
        reg = register_model("classifier", tiny_model_dir, {"accuracy": 0.5})
    assert reg.version == "1"
    rc = demo(_cfg())  # the default: revelio-classifier@champion
    assert rc == 0
    clf, _ = fake_launch[0]
    header = model_markdown(model_info(clf))
    for text in ("`revelio-classifier` version 1", "alias `champion`", "`up_blocks.1`", "t=10"):
        assert text in header, header


def test_a_busy_port_exits_1_with_one_line(tiny_model_dir, tmp_path):
    """In a real process: the model is a real one (its load starts background work), the port is taken."""
    import socket
    import subprocess
    import sys

    from tests.registry.helpers import subprocess_env

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = subprocess_env(GRADIO_ANALYTICS_ENABLED="False")
        env.pop("REVELIO_DEMO_USER", None)
        env.pop("REVELIO_DEMO_PASSWORD", None)
        out = subprocess.run([sys.executable, "-m", "revelio_svc.cli", "demo", "--model", str(tiny_model_dir),
                              "--port", str(port), "--set", f"output_dir={tmp_path / 'out'}"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 1, (out.returncode, out.stderr[-3000:])
    assert f"revelio demo: cannot serve on 127.0.0.1:{port}" in out.stderr and "Pick another --port" in out.stderr
    assert "Traceback" not in out.stderr


def test_registering_from_the_demo_is_off_unless_asked_for(tiny_model_dir, fake_launch):
    assert demo(_cfg(model=str(tiny_model_dir))) == 0
    assert fake_launch[-1][1]["allow_register"] is False
    assert demo(_cfg(model=str(tiny_model_dir), allow_register="true")) == 0
    assert fake_launch[-1][1]["allow_register"] is True


def test_the_demo_registers_few_shot_classifiers_only_under_names_of_their_own(tiny_clf, tmp_path):
    from revelio_svc.app.service import DemoService, InputError

    with pytest.raises(InputError, match="turned off"):  # the default
        DemoService(tiny_clf, fewshot_dir=tmp_path / "fs").register_fewshot(None, "mine", "revelio-fewshot")
    svc = DemoService(tiny_clf, fewshot_dir=tmp_path / "fs", allow_register=True)
    for name in ("revelio-classifier", "revelio-sae", "revelio-probe"):
        with pytest.raises(InputError, match="name of its own, e.g. 'revelio-classifier-fewshot'"):
            svc.register_fewshot(None, "mine", name)
    assert not (tmp_path / "fs").exists()  # refused before anything was saved


def test_background_work_starts_only_once_the_port_is_ours(tiny_clf, monkeypatch, tmp_path):
    import socket
    import time

    import revelio_svc.app.main as app_main

    started = []
    monkeypatch.setattr(app_main, "_warm", lambda svc: started.append(svc))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(OSError):
            app_main.launch(tiny_clf, port=taken.getsockname()[1], warm=True, prevent_thread_lock=True, quiet=True,
                            cache_dir=tmp_path, browse_images=40)
    time.sleep(0.5)
    assert started == []  # nothing left running when the failed start exits
    demo = app_main.launch(tiny_clf, port=free_port(), warm=True, prevent_thread_lock=True, quiet=True,
                           cache_dir=tmp_path, browse_images=40)
    try:
        for _ in range(50):
            if started:
                break
            time.sleep(0.1)
        assert len(started) == 1 and started[0].browse_images == 40
    finally:
        demo.close()
