"""Scale-out by settings alone: PostgreSQL for the catalog, checkpoints and registry, and a
two-node Ray cluster for batch inference.

Both backends are private to this module: a PostgreSQL cluster made with initdb in a temporary
folder, and a second Ray cluster (a head and a worker node) on free loopback ports with its own
temp dir. Each is always stopped, and the platform's own Ray is left running. Anything that does
not start fails the tests; nothing is skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alembic import command
from prefect import flow
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker
from prefect.settings import PREFECT_API_URL, temporary_settings
from pydantic import SecretStr
from pyiceberg.expressions import EqualTo
from sqlalchemy import create_engine, inspect, text

from checkpoints.database import (
    alembic_config,
    current_revision,
    head_revision,
    new_engine,
    upgrade,
)
from checkpoints.schema import schema_differences
from infra.processes import running
from mlplatform.connectors.iceberg_tables import load_table
from mlplatform.inference.batch.request import BatchRequest
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.preprocess.batch import jdbc_catalog_options, preprocess
from mlplatform.sample_data.demo_rows import write_demo_raw
from mlplatform.sample_data.synthetic_features import append_features
from mlplatform.settings import PROJECT_DIR, Settings
from mlplatform.training.retrain import retrain
from tests.concurrent_openers import open_in_processes
from tests.helpers import extra_service, settings_env
from tests.integration.batch_inference.exactly_once import (
    assert_exactly_once,
    race_commits,
    race_open_run,
)

pytestmark = pytest.mark.integration

ROWS, MALFORMED = 300, 9
PG_BIN = next(iter(sorted(Path("/usr/lib/postgresql").glob("*/bin"))), None)
VENV_BIN = PROJECT_DIR / ".venv" / "bin"
PG_USER, PG_PASSWORD = "mlp", "mlp-test-secret"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _as_postgres(*command: str) -> list[str]:
    """PostgreSQL refuses to run as root: drop to the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else list(command)


def _run(command: list[str], timeout: float = 120) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert completed.returncode == 0, (
        f"{command}: {completed.stdout[-2000:]}{completed.stderr[-2000:]}"
    )
    return completed.stdout


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """A private PostgreSQL cluster on a free loopback port; yields a SQLAlchemy URL prefix."""
    if PG_BIN is None or not (PG_BIN / "initdb").exists():
        pytest.fail("PostgreSQL is not installed: run `make setup` (infra/setup.sh installs it)")
    root = Path(tempfile.mkdtemp(prefix="mlp-pg-"))
    data, port = root / "data", _free_port()
    (root / "pwfile").write_text(PG_PASSWORD + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pwfile", "postgres", "postgres")
    try:
        _run(
            _as_postgres(
                str(PG_BIN / "initdb"),
                "-D",
                str(data),
                "-U",
                PG_USER,
                f"--pwfile={root / 'pwfile'}",
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
            )
        )
        _run(
            _as_postgres(
                str(PG_BIN / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(root / "postgres.log"),
                "-w",
                "-o",
                f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={root}",
                "start",
            )
        )
        base = f"postgresql+psycopg2://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}"
        admin = create_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text("CREATE DATABASE platform"))
            connection.execute(text("CREATE DATABASE catalog"))
        admin.dispose()
        yield base
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"),
                capture_output=True,
                timeout=60,
            )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def pg_settings(
    isolated: Settings, postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """The session's isolated settings with the catalog, checkpoints and registry on PostgreSQL."""
    root = tmp_path_factory.mktemp("scale-out")
    return isolated.model_copy(
        update={
            "namespace": f"{isolated.namespace}_pg",
            "features_topic": f"{isolated.features_topic}-pg",
            "stream_subscription": f"{isolated.stream_subscription}-pg",
            "landing_dir": root / "landing",
            "database_url": f"{postgres}/platform",
            "catalog_url": f"{postgres}/catalog",
        }
    )


@pytest.fixture(scope="module")
def pg_pipeline(pg_settings: Settings) -> dict:
    """preprocess (Flink's JdbcCatalog on PostgreSQL) -> retrain -> batch inference."""
    write_demo_raw(pg_settings, ROWS, MALFORMED, seed=21)
    processed = preprocess(pg_settings, run_id="it-pg-preprocess")
    trained = retrain(pg_settings)
    batch = run_batch_inference(pg_settings)
    return {"preprocess": processed, "trained": trained, "batch": batch}


def test_flink_gets_the_postgresql_catalog_as_jdbc(pg_settings: Settings) -> None:
    options = jdbc_catalog_options(pg_settings)
    assert options["uri"].startswith("jdbc:postgresql://127.0.0.1:")
    assert options["uri"].endswith("/catalog")
    assert (options["jdbc.user"], options["jdbc.password"]) == (PG_USER, PG_PASSWORD)


def test_pipeline_on_postgresql(pg_settings: Settings, pg_pipeline: dict) -> None:
    processed, batch = pg_pipeline["preprocess"], pg_pipeline["batch"]
    assert (processed.features_rows, processed.quarantined_rows) == (ROWS, MALFORMED)
    assert pg_pipeline["trained"].decision == "promote"
    features = load_table(pg_settings, pg_settings.features_table).scan().to_pandas()
    table = load_table(pg_settings, pg_settings.predictions_table)
    rows = table.scan(row_filter=EqualTo("run_id", batch.run_id)).to_pandas()
    assert len(rows) == len(features) == ROWS == batch.predicted_rows
    assert rows[pg_settings.key_column].is_unique
    assert set(rows[pg_settings.key_column]) == set(features[pg_settings.key_column])

    # The checkpoints and the registry live in PostgreSQL, the Iceberg catalog too.
    platform = create_engine(pg_settings.resolved_database_url)
    catalog = create_engine(pg_settings.resolved_catalog_url)
    try:
        assert {"checkpoint_runs", "checkpoint_units", "model_versions"} <= set(
            inspect(platform).get_table_names()
        )
        with platform.connect() as connection:
            status = connection.execute(
                text("SELECT status FROM checkpoint_runs WHERE run_id = :r"), {"r": batch.run_id}
            ).scalar_one()
            units = connection.execute(
                text("SELECT count(*) FROM checkpoint_units WHERE run_id = :r"), {"r": batch.run_id}
            ).scalar_one()
            models = connection.execute(text("SELECT count(*) FROM model_versions")).scalar_one()
        assert (status, units) == ("succeeded", batch.units_total)
        assert models == len(pg_pipeline["trained"].candidates)
        with catalog.connect() as connection:
            tables = connection.execute(
                text("SELECT table_name FROM iceberg_tables WHERE table_namespace = :n"),
                {"n": pg_settings.namespace},
            ).scalars()
            assert {pg_settings.features_table, pg_settings.predictions_table} <= set(tables)
    finally:
        platform.dispose()
        catalog.dispose()


def test_migrations_on_postgresql(postgres: str) -> None:
    """Concurrent first upgrades of a fresh database all succeed (the advisory lock), and give
    exactly the models' schema; downgrading to 0001 and upgrading again does too."""
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE migrations"))
    admin.dispose()
    url = f"{postgres}/migrations"
    assert open_in_processes(url) == [0, 0, 0]
    engine = new_engine(url)
    try:
        with engine.connect() as connection:
            assert current_revision(connection) == head_revision()
        assert schema_differences(engine) == []
        command.downgrade(alembic_config(url=url), "0001")
        assert "checkpoint_jobs" not in inspect(engine).get_table_names()
        upgrade(engine)
        assert schema_differences(engine) == []
    finally:
        engine.dispose()


@flow(name="scale-out-hello")
def _hello() -> str:
    return "hello"


def test_prefect_server_on_postgresql(
    postgres: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second Prefect server, started by infra like `make up`, keeps its runs in PostgreSQL."""
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE prefect"))
    admin.dispose()
    async_url = postgres.replace("+psycopg2", "+asyncpg")
    s = Settings(
        local_dir=tmp_path_factory.mktemp("prefect-pg"),
        prefect_api_url=f"http://127.0.0.1:{_free_port()}/api",
        prefect_database_url=SecretStr(f"{async_url}/prefect"),
    )
    with extra_service("prefect-server", s, "the Prefect server on PostgreSQL"):
        with temporary_settings({PREFECT_API_URL: s.prefect_api_url}):
            state = _hello(return_state=True)
            # This process's event and log workers started for this server: drain and stop
            # them while it is up, so that later tests' in-process runs get workers of their
            # own server instead of sending to this one after it stopped.
            EventsWorker.drain_all(timeout=60)
            APILogWorker.drain_all(timeout=60)
        assert state.is_completed()
        engine = create_engine(f"{postgres}/prefect")
        with engine.connect() as connection:
            names = connection.execute(
                text(
                    "SELECT f.name FROM flow_run r JOIN flow f ON f.id = r.flow_id "
                    "WHERE r.state_type = 'COMPLETED'"
                )
            ).scalars()
            assert "scale-out-hello" in set(names)
        engine.dispose()


def _ray_env() -> dict[str, str]:
    # Loopback only, as for the platform's Ray (mlplatform/__init__.py).
    return {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


def _node_ports() -> list[str]:
    """Every port a Ray node opens, free when chosen; workers' ports picked by the OS (0: no
    fixed range that another Ray on the machine could hold)."""
    return [
        "--node-ip-address",
        "127.0.0.1",
        "--node-manager-port",
        str(_free_port()),
        "--object-manager-port",
        str(_free_port()),
        "--runtime-env-agent-port",
        str(_free_port()),
        "--dashboard-agent-grpc-port",
        str(_free_port()),
        "--dashboard-agent-listen-port",
        str(_free_port()),
        "--metrics-export-port",
        str(_free_port()),
        "--min-worker-port",
        "0",
        "--max-worker-port",
        "0",
        "--num-cpus",
        "2",
        "--object-store-memory",
        "200000000",
        "--disable-usage-stats",
    ]


def _stop_processes_under(marker: str) -> None:
    """SIGTERM, then SIGKILL, every process whose command line names `marker`, and its children.

    Never `ray stop`: it stops every Ray on the machine, the platform's included.
    """
    table = running()
    found = {p.pid for p in table if marker in p.command_line}
    while True:  # workers rename themselves (ray::...): find them as children
        children = {p.pid for p in table if p.parent in found} - found
        if not children:
            break
        found |= children
    for sig, wait_s in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and (found & {p.pid for p in running()}):
            time.sleep(0.25)
        found &= {p.pid for p in running()}
        if not found:
            return


KEEP_LOOPBACK_RAY_START = (
    "import ray._private.services as services; "
    "services.resolve_ip_for_localhost = lambda host: host; "
    "from ray.scripts.scripts import main; main()"
)


@pytest.fixture
def ray_cluster() -> Iterator[tuple[str, Callable[[], None]]]:
    """A separate two-node Ray cluster on loopback; yields the head's address and its stop."""
    # Short: Ray's unix socket paths live under the temp dir.
    root = Path(tempfile.mkdtemp(prefix="mlpray-", dir="/tmp"))
    port = _free_port()
    address = f"127.0.0.1:{port}"
    head = [
        str(VENV_BIN / "ray"),
        "start",
        "--head",
        "--port",
        str(port),
        "--dashboard-host",
        "127.0.0.1",
        "--dashboard-port",
        str(_free_port()),
        "--ray-client-server-port",
        str(_free_port()),
        "--temp-dir",
        str(root),
        *_node_ports(),
    ]
    # Ray refuses a second node under RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with it on, swaps
    # a 127.0.0.1 --address for the machine's outward address, where this GCS does not listen.
    # The worker node's `ray start` keeps the loopback address as given; its servers, like the
    # head's, listen on 127.0.0.1 only (--node-ip-address).
    worker = [
        str(VENV_BIN / "python"),
        "-c",
        KEEP_LOOPBACK_RAY_START,
        "start",
        "--address",
        address,
        "--temp-dir",
        str(root),
        "--resources",
        json.dumps({"node2": 1}),
        *_node_ports(),
    ]
    try:
        for command, multi_node in ((head, "0"), (worker, "1")):
            env = {**_ray_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": multi_node}
            completed = subprocess.run(
                command, capture_output=True, text=True, timeout=180, env=env
            )
            if completed.returncode != 0:
                pytest.fail(
                    f"ray start failed: {completed.stdout[-2000:]}{completed.stderr[-2000:]}"
                )
        yield address, lambda: _stop_processes_under(str(root))
    finally:
        _stop_processes_under(str(root))
        shutil.rmtree(root, ignore_errors=True)


BATCH_ON_CLUSTER = """
import json
import ray
from ray.util.state import list_actors, list_tasks
from mlplatform.inference.batch.runner import run_batch_inference
from mlplatform.settings import Settings

result = run_batch_inference(Settings())
nodes = [n for n in ray.nodes() if n["Alive"]]
node2 = [n["NodeID"] for n in nodes if "node2" in n["Resources"]]
state = {"address": ray.get_runtime_context().gcs_address, "limit": 10000,
         "raise_on_missing_output": False}
used = {t.node_id for t in list_tasks(**state) if t.node_id}
used |= {a.node_id for a in list_actors(**state) if a.node_id}
print(json.dumps({"run_id": result.run_id, "predicted": result.predicted_rows,
                  "nodes": len(nodes), "node2": node2, "used_nodes": sorted(used)}))
"""


def test_batch_inference_on_a_two_node_ray_cluster(
    pg_settings: Settings, pg_pipeline: dict, ray_cluster: tuple[str, Callable[[], None]]
) -> None:
    address, stop_cluster = ray_cluster
    env = {
        **_ray_env(),
        **settings_env(pg_settings),
        "MLP_CATALOG_URL": str(pg_settings.catalog_url),
        "MLP_RAY_ADDRESS": address,
        "MLP_ACTOR_POOL_MIN": "2",
        "MLP_ACTOR_POOL_MAX": "2",
        # Two actors of 1.5 CPUs cannot share a 2-CPU node: one runs on each.
        "MLP_ACTOR_NUM_CPUS": "1.5",
        # Ray Data starts on the first ready actor: on a busy machine the small input was done
        # before the other node's actor existed (seen once in CI). Wait for both.
        "RAY_DATA_DEFAULT_WAIT_FOR_MIN_ACTORS_S": "120",
    }
    completed = subprocess.run(
        [str(VENV_BIN / "python"), "-c", BATCH_ON_CLUSTER],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=PROJECT_DIR,
        env=env,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["nodes"] == 2 and len(report["node2"]) == 1
    assert report["node2"][0] in report["used_nodes"], report
    assert len(report["used_nodes"]) == 2, report
    table = load_table(pg_settings, pg_settings.predictions_table)
    rows = table.scan(row_filter=EqualTo("run_id", report["run_id"])).to_pandas()
    assert len(rows) == report["predicted"] == ROWS
    assert rows[pg_settings.key_column].is_unique

    # The private cluster is gone; the platform's Ray, on the same machine, still runs.
    stop_cluster()
    with socket.socket() as sock:
        assert sock.connect_ex(("127.0.0.1", int(address.rpartition(":")[2]))) != 0
    completed = subprocess.run(
        [str(VENV_BIN / "mlp"), "services", "status", "ray"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=PROJECT_DIR,
    )
    assert completed.returncode == 0 and "healthy" in completed.stdout, completed.stdout


def test_batch_inference_resumes_and_races_safely_on_postgresql(
    pg_settings: Settings, postgres: str
) -> None:
    # A database (checkpoints, registry) of its own: a champion it promoted would make the
    # pipeline test's first model a rejected candidate when that test runs later.
    admin = create_engine(f"{postgres}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text("CREATE DATABASE batch"))
    admin.dispose()
    s = pg_settings.model_copy(
        update={
            "namespace": f"{pg_settings.namespace}_batch",
            "database_url": f"{postgres}/batch",
            "unit_rows": 500,
            "commit_every_rows": 500,
        }
    )
    append_features(s, 3000, seed=4, row_group_rows=500)
    pinned = BatchRequest(model_version=retrain(s, on_ray=False).best_version)

    class Crash(Exception):
        pass

    def crash_at_the_second_commit(units_done: int, units_total: int) -> None:
        if units_done >= 2:
            raise Crash

    with pytest.raises(Crash):
        run_batch_inference(s, pinned, on_progress=crash_at_the_second_commit)
    resumed = run_batch_inference(s, pinned)
    assert resumed.resumed and resumed.skipped_rows >= 1000
    assert resumed.skipped_rows + resumed.predicted_rows == 3000
    assert_exactly_once(s, resumed.run_id)
    race_commits(s)
    race_open_run(s)
