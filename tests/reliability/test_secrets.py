"""A password in a URL-like value is never printed, whether the value is valid or not."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from taskflow.config import mask_url, quoted

ROOT = Path(__file__).resolve().parents[2]
SECRET = "S3cretPw"


def taskflow(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        k: v for k, v in os.environ.items() if not k.startswith("TASKFLOW_") and k != "PYTHONPATH"
    }
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "taskflow", *args],
        cwd=ROOT,
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        encoding="utf-8",
        timeout=20,
        check=False,
    )


@pytest.mark.parametrize("command", ["run", "info"])
@pytest.mark.parametrize(
    ("variable", "flag", "value"),
    [
        ("TASKFLOW_REDIS_URL", "--redis", f"user:{SECRET}@redis.internal:6379/0"),
        ("TASKFLOW_REDIS_URL", "--redis", f"http://:{SECRET}@redis.internal:6379/0"),
        ("TASKFLOW_REDIS_URL", "--redis", f"redis//{SECRET}@[::1"),
        ("TASKFLOW_BROKER", "--broker", f"kafkas://u:{SECRET}@k:9092"),
        ("TASKFLOW_BROKER", "--broker", f"kafka://k:9092?password={SECRET}"),
        ("TASKFLOW_BROKER", "--broker", f"kafka://k:9092?sasl_plain_password={SECRET}&x=1"),
        ("TASKFLOW_BROKER", "--broker", f"kafka://u:{SECRET}@k:9092"),
        ("TASKFLOW_BROKER", "--broker", f"memory://u:{SECRET}@x"),
        ("TASKFLOW_BROKER", "--broker", f"memory://?token={SECRET}"),
        ("TASKFLOW_BROKER", "--broker", f"kafka://[{SECRET}@::1"),
        ("TASKFLOW_SHUTDOWN_TIMEOUT", "--shutdown-timeout", f"a:{SECRET}@b"),
    ],
)
def test_a_secret_in_a_bad_value_is_never_printed(
    command: str, variable: str, flag: str, value: str
) -> None:
    for result in (
        taskflow(command, "tests.apps.idle:app", **{variable: value}),
        taskflow(command, "tests.apps.idle:app", f"{flag}={value}"),
    ):
        assert result.returncode == 2, result.stderr
        [line] = result.stderr.splitlines()
        assert line.startswith("Error: ")
        assert SECRET not in result.stdout + result.stderr


def test_info_masks_a_scheme_less_password_in_a_kafka_option() -> None:
    result = taskflow(
        "info",
        "tests.apps.idle:app",
        TASKFLOW_BROKER="kafka://127.0.0.1:9",
        TASKFLOW_KAFKA_CLIENT_ID=f"svc:{SECRET}@host",
    )

    assert result.returncode == 0, result.stderr
    assert "svc:***@host" in result.stdout
    assert SECRET not in result.stdout + result.stderr


# -- the masking function ---------------------------------------------------------------------

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        (f"user:{SECRET}@redis.internal:6379/0", "user:***@redis.internal:6379/0"),
        (f"kafkas://u:{SECRET}@k:9092", "kafkas://u:***@k:9092"),
        (f"kafka://k:9092?password={SECRET}", "kafka://k:9092?password=***"),
        (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
        (f"redis://{SECRET}@h", "redis://***@h"),
        (f"redis://u:p/{SECRET}@h/0", "redis://u:***@h/0"),
        (f"redis://u:p@{SECRET}@h", "redis://u:***@h"),
        (f"rediss://h/0?ssl=1&api_key={SECRET}#x", "rediss://h/0?ssl=1&api_key=***#x"),
        (f"password={SECRET}", "password=***"),
        ("redis://keydb:6379/0?db=1", "redis://keydb:6379/0?db=1"),
        ("memory://", "memory://"),
        ("kafka://a:9092,b:9092", "kafka://a:9092,b:9092"),
    ],
)
def test_mask_url(value: str, masked: str) -> None:
    assert mask_url(value) == masked


@given(
    scheme=st.sampled_from(["", "redis://", "rediss://", "kafka://", "x+y://", "http:"]),
    user=_text.filter(lambda t: ":" not in t and "@" not in t and "/" not in t),
    password=_text.map(lambda t: SECRET + t),
    host=_text.filter(lambda t: "@" not in t),
)
def test_no_password_survives_masking(scheme: str, user: str, password: str, host: str) -> None:
    assume(SECRET not in user + host)

    assert SECRET not in mask_url(f"{scheme}{user}:{password}@{host}")
    if ":" not in password:  # else its start reads as a user name
        assert SECRET not in mask_url(f"{scheme}{password}@{host}")
    assert SECRET not in quoted(f"{scheme}{user}:{password}@{host}")


@given(
    url=st.sampled_from(["kafka://k:9092", "redis://h/0", "", "x"]),
    before=st.sampled_from(["", "a=1&", "ssl=true;"]),
    name=st.sampled_from(
        ["password", "sasl_plain_password", "secret", "token", "api_key", "auth", "Passwd"]
    ),
    secret=st.text(
        st.characters(blacklist_categories=("Cs",), blacklist_characters="&;#"), max_size=10
    ).map(lambda t: SECRET + t),
)
def test_no_secret_parameter_survives_masking(
    url: str, before: str, name: str, secret: str
) -> None:
    separator = "?" if url else ""
    assert SECRET not in mask_url(f"{url}{separator}{before}{name}={secret}")


@given(_text)
def test_masking_takes_any_text_and_leaves_text_without_at_or_secret_names(text: str) -> None:
    masked = mask_url(text)
    if "@" not in text and "=" not in text:
        assert masked == text
