"""The Prefect UI in headless Chromium: every deployment with its schedule and documented
parameters, and a finished flow run with its task runs, logs, progress and summary artifacts.

Debian's chromium (infra/setup.sh installs it) is driven by the `playwright` package; no browser
is downloaded. Screenshots of every page checked go to .local/screenshots/.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import Browser, Page, expect, sync_playwright
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import Deployment
from prefect.deployments import run_deployment
from sklearn.datasets import load_iris

from mlplatform.connectors.iceberg_tables import ensure_tables, load_table
from mlplatform.sample_data.synthetic_features import features_table_rows
from mlplatform.settings import PROJECT_DIR, Settings
from mlplatform.training.retrain import retrain
from tests.helpers import module_settings, settings_env

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 60_000  # one page of the SPA to render on a busy machine
ROWS = 50  # feature rows the finished run predicts
SHOTS = PROJECT_DIR / ".local" / "screenshots"


def ui_url(s: Settings) -> str:
    return s.prefect_api_url.removesuffix("/").removesuffix("/api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless Debian chromium; missing, it fails the run in CI and skips elsewhere."""
    executable = shutil.which("chromium") or (CHROMIUM if Path(CHROMIUM).exists() else None)
    if executable is None:
        message = "chromium is not installed: run `make setup` (apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=executable, headless=True)
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    yield context.new_page()
    context.close()


@pytest.fixture(scope="module")
def registered(deployments: None) -> list[tuple[str, Deployment]]:
    """Each deployment of prefect.yaml as '<flow>/<name>' with its record on the server."""
    spec = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())["deployments"]
    found = []
    with get_client(sync_client=True) as client:
        by_key = {(d.entrypoint, d.name): d for d in client.read_deployments(limit=200)}
        for entry in spec:
            deployment = by_key[(entry["entrypoint"], entry["name"])]
            flow_name = client.read_flow(deployment.flow_id).name
            found.append((f"{flow_name}/{deployment.name}", deployment))
    return found


@pytest.fixture(scope="module")
def finished_run(isolated: Settings, deployments: None) -> str:
    """A completed batch-inference run through the worker, on 50 feature rows of its own."""
    s = module_settings(
        isolated, "ui", candidate_grid=[{"family": "decision_tree", "max_depth": 3}]
    )
    ensure_tables(s)
    features = load_table(s, s.features_table)
    iris = load_iris()
    picks = range(0, len(iris.target), len(iris.target) // ROWS)  # every class
    columns: dict[str, list] = {s.key_column: [f"ui-{i}" for i in picks]}
    for j, name in enumerate(s.feature_columns):
        columns[name] = [float(iris.data[i][j]) for i in picks]
    columns[s.label_column] = [int(iris.target[i]) for i in picks]
    columns["ingested_at"] = [datetime(2026, 1, 1)] * len(columns[s.key_column])
    features.append(features_table_rows(s, columns))
    assert retrain(s, on_ray=False).decision == "promote"
    # _sync: Playwright's sync API keeps an event loop running in this thread.
    flow_run = run_deployment(
        name="batch-inference/default",
        job_variables={"env": settings_env(s)},
        timeout=600,
        _sync=True,  # type: ignore[call-arg]
    )
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    return str(flow_run.id)


def shot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.wait_for_load_state("networkidle")  # no half-loaded panels in the picture
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_deployments_page_lists_every_deployment_and_the_retrain_schedule(
    page: Page, registered: list[tuple[str, Deployment]], isolated: Settings
) -> None:
    page.goto(f"{ui_url(isolated)}/deployments")
    rows = page.locator("tr")
    # The list shows a page of rows at a time: each flow's deployments are searched for.
    search = page.get_by_placeholder("Search deployments...")
    for full_name, _ in registered:
        flow_name, name = full_name.split("/")
        search.fill(flow_name)
        row = rows.filter(has=page.get_by_text(flow_name, exact=True)).filter(
            has=page.get_by_text(name, exact=True)
        )
        expect(row, f"{full_name} is not listed").to_have_count(1)
    # The UI writes the cron "0 3 * * *" in words, in the schedules column of retrain's row.
    search.fill("retrain")
    retrain_row = rows.filter(has=page.get_by_text("retrain", exact=True))
    expect(retrain_row).to_contain_text("At 03:00 AM every day")
    search.fill("")
    shot(page, "deployments")


def test_each_deployment_page_shows_its_schedule_and_documented_parameters(
    page: Page, registered: list[tuple[str, Deployment]], isolated: Settings
) -> None:
    documented = 0
    for full_name, deployment in registered:
        base = f"{ui_url(isolated)}/deployments/deployment/{deployment.id}"
        page.goto(base)
        assert deployment.description, f"{full_name} has no description in prefect.yaml"
        page.get_by_text("Description", exact=True).click()
        expect(page.get_by_text(deployment.description).first).to_be_visible()
        if full_name == "retrain/default":
            expect(page.get_by_text("At 03:00 AM every day").first).to_be_visible()
            shot(page, "deployment-retrain")
        # The run form shows each parameter with the description from the flow's docstring.
        page.goto(f"{base}/run")
        expect(page.get_by_role("button", name="Submit")).to_be_visible()  # the form rendered
        properties = deployment.parameter_openapi_schema.get("properties", {})
        for parameter, schema in properties.items():
            expect(page.get_by_text(f"{parameter} (Optional)", exact=True)).to_be_visible()
            if schema.get("description"):
                expect(page.get_by_text(schema["description"], exact=True)).to_be_visible()
                documented += 1
        shot(page, f"deployment-{full_name.replace('/', '-')}-parameters")
    assert documented, "no deployment documents its parameters (an Args: section in the flow)"


def test_finished_flow_run_page_shows_task_runs_logs_and_artifacts(
    page: Page, finished_run: str, isolated: Settings
) -> None:
    page.goto(f"{ui_url(isolated)}/runs/flow-run/{finished_run}")
    expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
    # Logs (the default tab): the worker's, Prefect's and the flow's own printed result.
    expect(page.get_by_text("batch-inference: BatchResult(").first).to_be_visible()
    expect(page.get_by_text(f"input_rows={ROWS},").first).to_be_visible()
    expect(page.get_by_text("Finished in state Completed()").first).to_be_visible()
    shot(page, "flow-run-logs")

    page.get_by_text("Task Runs", exact=True).click()
    expect(page.get_by_text("ray-data-batch-inference-").first).to_be_visible()
    shot(page, "flow-run-task-runs")

    page.get_by_text("Artifacts", exact=True).click()
    expect(page.get_by_text("batch-inference-summary", exact=True).first).to_be_visible()
    progress = page.get_by_text("units committed", exact=True)
    expect(progress).to_be_visible()
    shot(page, "flow-run-artifacts")

    progress.click()  # the progress artifact's own page
    expect(page.get_by_text("Progress: 100%")).to_be_visible()
    shot(page, "flow-run-progress-artifact")
