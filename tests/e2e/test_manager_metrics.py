"""A manager run alone serves ``/metrics`` on ``SKYBUS_METRICS_PORT`` (and nothing when it is unset)."""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.cli import manager_metrics
from services.settings import Settings
from tests.e2e.harness import SkybusProcess, eventually, skybus_env

pytestmark = pytest.mark.e2e


async def test_the_job_manager_alone_serves_jobs_by_state(tmp_path) -> None:
    manager = await SkybusProcess(
        ["job-manager", "--data-dir", str(tmp_path)], skybus_env(SKYBUS_METRICS_PORT="0")
    ).start()
    try:
        port: list[str] = []

        async def announced() -> bool:
            port.extend(line.rsplit(":", 1)[1].split("/")[0] for line in manager.log if "metrics on http" in line)
            return bool(port)

        await eventually(announced)
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port[0]}/metrics") as response:
                assert response.status == 200
                text = await response.text()
        families = {family.name: family for family in text_string_to_metric_families(text)}
        states = {sample.labels["state"]: sample.value for sample in families["skybus_jobs"].samples}
        assert states["pending"] == 0 and set(states) >= {"running", "succeeded", "lost"}
        assert "process_cpu_seconds" in families
    finally:
        assert await manager.stop() == 0, manager.log[-20:]


def test_without_the_setting_there_is_no_metrics_server(tmp_path) -> None:
    settings = Settings(data_dir=tmp_path)
    assert settings.metrics_port is None
    assert manager_metrics("job-manager", settings, store=None) == []  # type: ignore[arg-type]
