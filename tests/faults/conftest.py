"""The guard every fault test runs under: no command may end in a traceback.

Each ``CliRunner.invoke`` in tests/faults is wrapped so that an exception escaping a
command (anything but the ``SystemExit`` of a normal or error exit) or a printed
"Traceback" fails the test that provoked it, whatever that test itself checks.
"""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

_invoke = CliRunner.invoke


def guarded_invoke(self: CliRunner, *args, **kwargs):
    """``CliRunner.invoke``, failing when a traceback reaches the user."""
    result = _invoke(self, *args, **kwargs)
    escaped = result.exception
    assert escaped is None or isinstance(escaped, SystemExit), (
        f"{type(escaped).__name__} escaped the command: {escaped}\n{result.output}"
    )
    assert "Traceback" not in result.output, result.output
    return result


@pytest.fixture(autouse=True)
def no_traceback(monkeypatch) -> None:
    """Every CLI invocation of the test goes through :func:`guarded_invoke`."""
    monkeypatch.setattr(CliRunner, "invoke", guarded_invoke)
