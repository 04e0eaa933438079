"""Optional login from REVELIO_DEMO_USER / REVELIO_DEMO_PASSWORD."""
from __future__ import annotations

import httpx
import pytest

from revelio_svc.app.main import auth_from_env, launch

from .conftest import free_port


def test_auth_from_env_needs_both_or_neither():
    assert auth_from_env({}) is None
    assert auth_from_env({"REVELIO_DEMO_USER": "ada", "REVELIO_DEMO_PASSWORD": "pw"}) == ("ada", "pw")
    with pytest.raises(ValueError, match="REVELIO_DEMO_USER is not set"):
        auth_from_env({"REVELIO_DEMO_PASSWORD": "pw"})


def test_login_is_required_when_auth_is_set(tiny_clf, tmp_path):
    from gradio_client import Client

    demo = launch(tiny_clf, port=free_port(), auth=("ada", "s3cret"), prevent_thread_lock=True, quiet=True,
                  fewshot_dir=tmp_path)
    try:
        url = demo.local_url
        assert httpx.get(url + "config").status_code == 401  # nothing but the login page without a session
        # Gradio answers a wrong password with 400; gradio_client turns that into this ValueError
        with pytest.raises(ValueError, match="Could not login"):
            Client(url, auth=("ada", "wrong"), verbose=False)
        info = Client(url, auth=("ada", "s3cret"), verbose=False).predict(api_name="/model_info")
        assert info["hook_point"] == "up_blocks.1"
    finally:
        demo.close()
