"""Tracking URIs MLflow cannot use are refused before MLflow opens them: real files, real servers.

A SQLite file of another program, a damaged store, a store of another schema version, a database
whose driver is missing, a server that never answers and one that is not MLflow's.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import re
import shutil
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from varnext_ray import tracking, tracking_sqlite, tracking_uri
from varnext_ray.errors import UserError


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sqlite_uri(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real MLflow SQLite store with one run (made once; tests work on copies)."""
    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    tracking.start_run(sqlite_uri(path), "e", run_name="r", params={"lr": 0.1})
    return path


@pytest.fixture
def store_copy(store: Path, tmp_path: Path) -> Path:
    path = tmp_path / "copy.db"
    shutil.copyfile(store, path)
    return path


@pytest.fixture
def other_program_db(tmp_path: Path) -> Path:
    """A valid SQLite database of another program (its own tables, no MLflow ones)."""
    path = tmp_path / "inventory.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
    conn.executemany("INSERT INTO items (name) VALUES (?)", [("bolt",), ("nut",)])
    conn.execute("INSERT INTO alembic_version VALUES ('0123456789ab')")
    conn.commit()
    conn.close()
    return path


@pytest.mark.parametrize("existing", [False, True], ids=["train", "best"])
def test_a_sqlite_database_of_another_program_is_refused_and_left_unchanged(
    other_program_db: Path, existing: bool
) -> None:
    before = sha256(other_program_db)
    with pytest.raises(UserError, match=r"not an MLflow store \(its tables: items\)"):
        tracking.check_reachable(sqlite_uri(other_program_db), existing=existing)
    assert sha256(other_program_db) == before
    assert sorted(p.name for p in other_program_db.parent.iterdir()) == ["inventory.db"]


def test_a_database_with_only_alembic_bookkeeping_is_said_so(tmp_path: Path) -> None:
    """It was said to have "no tables" while it had one."""
    import sqlite3

    path = tmp_path / "mlflow.db"
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    with pytest.raises(UserError, match=r"holds no MLflow store \(it has only alembic_version\)"):
        tracking.open_store(sqlite_uri(path))


def test_an_empty_file_holds_no_store_for_reading_but_may_become_one(tmp_path: Path) -> None:
    empty = tmp_path / "mlflow.db"
    empty.touch()
    with pytest.raises(UserError, match=r"holds no MLflow store \(it is empty\)"):
        tracking.open_store(sqlite_uri(empty))
    assert empty.stat().st_size == 0
    tracking.check_reachable(sqlite_uri(empty))  # train/sweep may create a store in it


@pytest.mark.parametrize("kept", ["half", 4096, 100])
def test_a_truncated_store_is_refused_for_every_command(
    store: Path, tmp_path: Path, kept: str | int
) -> None:
    damaged = tmp_path / "damaged.db"
    data = store.read_bytes()
    damaged.write_bytes(data[: len(data) // 2 if kept == "half" else kept])
    before = sha256(damaged)
    for existing in (False, True):
        with pytest.raises(UserError, match="damaged or unreadable"):
            tracking.check_reachable(sqlite_uri(damaged), existing=existing)
    assert sha256(damaged) == before


def set_schema(path: Path, revision: str) -> None:
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    conn.commit()
    conn.close()


def test_a_store_of_an_older_schema_asks_for_mlflow_db_upgrade(store_copy: Path) -> None:
    head, known = tracking_sqlite._mlflow_revisions()
    assert head is not None and head in known
    old = sorted(known - {head})[0]
    set_schema(store_copy, old)
    before = sha256(store_copy)
    uri = sqlite_uri(store_copy)
    with pytest.raises(
        UserError, match=rf"older schema \({old};.*mlflow db upgrade {re.escape(uri)}"
    ):
        tracking.open_store(uri)
    with pytest.raises(UserError, match="older schema"):
        tracking.check_reachable(uri)
    assert sha256(store_copy) == before


def test_a_store_of_an_unknown_schema_names_a_newer_mlflow(store_copy: Path) -> None:
    set_schema(store_copy, "ffffffffffff")
    with pytest.raises(UserError, match=r"written by a newer MLflow .*use that MLflow version"):
        tracking.open_store(sqlite_uri(store_copy))


def test_a_store_of_the_current_schema_is_opened_unchanged(store: Path) -> None:
    before = sha256(store)
    tracking.check_reachable(sqlite_uri(store))
    assert tracking.open_store(sqlite_uri(store))[0] == sqlite_uri(store)
    assert sha256(store) == before


@pytest.mark.skipif(importlib.util.find_spec("psycopg") is not None, reason="psycopg is installed")
def test_a_database_uri_without_its_driver_names_the_package_to_install() -> None:
    uri = "postgresql://me:secret@127.0.0.1:5432/mlflow"
    with pytest.raises(
        UserError, match=r"no module 'psycopg'.*pip install 'psycopg\[binary\]'"
    ) as e:
        tracking.check_reachable(uri)
    assert "secret" not in str(e.value)


@pytest.mark.parametrize(
    "uri", [" sqlite:////tmp/m.db", "http://127.0.0.1:5000\n", "sqlite:////tmp/a\tb.db"]
)
def test_a_uri_with_stray_whitespace_is_refused_as_such(uri: str) -> None:
    with pytest.raises(UserError, match="starts or ends with a space, or holds a control"):
        tracking.check_reachable(uri)


@pytest.mark.parametrize(
    "uri, message",
    [
        ("http://[::1", "the tracking URI is malformed"),
        ("SQLITE:////tmp/m.db", "begins with sqlite: in lower case"),
        ("sqlite:////tmp/m.db?mode=ro", "takes no \\?options"),
        ("sqlite:////tmp/m.db?uri=true&mode=memory", "takes no \\?options"),
        ("databricks://no-such-profile", "no Databricks credentials are configured"),
    ],
)
def test_malformed_and_unusable_uris_are_one_line(
    uri: str, message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CONFIG_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.databrickscfg
    with pytest.raises(UserError, match=message):
        tracking.check_reachable(uri)


def test_a_sqlite_uri_with_a_driver_is_checked_as_sqlite(tmp_path: Path) -> None:
    tracking.check_reachable(f"sqlite+pysqlite:///{tmp_path}/mlflow.db")  # MLflow opens these
    with pytest.raises(UserError, match="folder of the MLflow database does not exist"):
        tracking.check_reachable(f"sqlite+pysqlite:///{tmp_path}/nope/mlflow.db")


@pytest.mark.parametrize("token", ["abc\ndef", "t\u00f6k\u00e9n\u20ac", " padded"])
def test_a_token_http_cannot_send_is_refused_without_showing_it(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", token)
    with socket.socket() as server:  # something listens: the check gets as far as the header
        server.bind(("127.0.0.1", 0))
        server.listen()
        uri = f"http://127.0.0.1:{server.getsockname()[1]}"
        with pytest.raises(UserError, match="MLFLOW_TRACKING_TOKEN") as e:
            tracking.check_reachable(uri, timeout_s=2)
    assert token.strip() not in str(e.value)


def test_a_space_inside_a_sqlite_path_is_a_path(tmp_path: Path) -> None:
    folder = tmp_path / "my runs"
    folder.mkdir()
    tracking.check_reachable(f"sqlite:///{folder}/mlflow.db")  # a new store there: fine


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A TCP server on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


def test_a_server_that_never_answers_is_refused_within_the_timeout(silent_server: str) -> None:
    start = time.monotonic()
    with pytest.raises(UserError, match=r"no MLflow server answers within 1 s"):
        tracking.check_reachable(silent_server, timeout_s=1.0)
    assert time.monotonic() - start < 5


@pytest.fixture
def plain_http_server(tmp_path: Path) -> Iterator[str]:
    """``python -m http.server`` on 127.0.0.1, serving an empty folder: /health is a 404."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(tmp_path), **kwargs)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_an_http_server_that_is_not_mlflow_is_refused(plain_http_server: str) -> None:
    with pytest.raises(UserError, match=r"not an MLflow tracking server \(GET /health: 404\)"):
        tracking.check_reachable(plain_http_server, timeout_s=2.0)


def test_best_on_another_program_database_exits_2_with_one_line(
    other_program_db: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from varnext_ray.cli import main

    before = sha256(other_program_db)
    uri = sqlite_uri(other_program_db)
    assert (
        main(["best", "--experiment", "x", "--tracking-uri", uri, "--out", str(tmp_path / "o")])
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not an MLflow store" in err, err
    assert sha256(other_program_db) == before
    assert not (tmp_path / "o").exists()


def test_a_real_mlflow_server_passes_the_health_check(mlflow_server: str) -> None:
    tracking.check_reachable(mlflow_server, timeout_s=5.0)
    tracking.check_reachable(mlflow_server + "/", timeout_s=5.0)


def test_a_store_another_process_is_creating_is_not_refused(tmp_path: Path) -> None:
    """Two commands started at once on a new store: while one runs MLflow's migrations, the
    file passes through every older schema, and the other refused it as "an older schema ...
    run mlflow db upgrade" (seen in CI: a test polling the store it waits for). A refusal now
    waits for the file to settle."""
    import subprocess
    import sys

    db = tmp_path / "mlflow.db"
    uri = f"sqlite:///{db}"
    maker = subprocess.Popen(
        [sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"]
    )
    checks = 0
    while maker.poll() is None:
        if db.exists():
            tracking_uri.check_reachable(uri)  # never an "older schema" mid-migration
            checks += 1
        time.sleep(0.02)
    assert maker.returncode == 0 and checks > 0
    tracking_uri.check_reachable(uri)


# name=value: what MLflow would read as it opens the store, or deep in a download (exit 1)
BAD_ENV = {
    "MLFLOW_SQLALCHEMYSTORE_POOL_SIZE": ("abc", "is not a valid integer (MLflow reads it)"),
    "MLFLOW_SQLALCHEMYSTORE_ECHO": ("maybe", "is not a valid true/false"),
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": ("maybe", "is not a valid true/false"),
    "MLFLOW_HTTP_REQUEST_TIMEOUT": ("1.5s", "is not a valid integer"),
    "MLFLOW_SQLALCHEMYSTORE_POOLCLASS": ("Nope", "Invalid poolclass parameter: Nope"),
}


@pytest.mark.parametrize("name", list(BAD_ENV))
def test_an_mlflow_variable_it_cannot_read_is_one_line_for_every_command(
    name: str,
    store_copy: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
) -> None:
    from varnext_ray.cli import main

    value, expected = BAD_ENV[name]
    monkeypatch.setenv(name, value)
    with pytest.raises(UserError, match=re.escape(expected)):  # train, sweep, demo check this
        tracking_uri.check_reachable(sqlite_uri(store_copy))
    out = tmp_path / "best"
    code = main(["best", "--experiment", "e", "--tracking-uri", sqlite_uri(store_copy),
                 "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("error: ") and expected in err[0]
    assert not out.exists()
    if name != "MLFLOW_SQLALCHEMYSTORE_POOLCLASS":
        assert f"{name}={value!r}" in err[0] and "unset it or set a valid value" in err[0]


# ---- hostile pass 10: a store locked, read-only, edited, or named with options ---------------


def _best(uri: str, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    from varnext_ray.cli import main

    code = main(["best", "--experiment", "e", "--tracking-uri", uri, "--out", str(out)])
    return code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("suffix", "said"),
    [
        ("?timeout=5", "takes no ?options"),  # "no MLflow database at this path" (it is there)
        (" ", "starts or ends with a space"),
        ("\n", "starts or ends with a space"),
    ],
)
def test_best_names_what_is_wrong_with_a_store_uri(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, said: str
) -> None:
    code, err = _best(sqlite_uri(store) + suffix, tmp_path / "o", capsys)
    assert code == 2 and len(err) == 1 and said in err[0], err


@pytest.mark.timeout(120)
def test_a_store_locked_by_another_process_is_one_line(
    store_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An exclusive lock held by another writer ended best in "unexpected OperationalError:
    database is locked" (exit 1) once MLflow's wait ran out."""
    holder = sqlite3.connect(store_copy, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        code, err = _best(sqlite_uri(store_copy), tmp_path / "o", capsys)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: the MLflow database failed (database is locked)"), err
    assert not (tmp_path / "o").exists()


def test_a_metric_value_that_is_not_a_number_is_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A best_ value SQLite kept as text (the column edited by hand) ended best in
    "unexpected TypeError: must be real number, not str" (exit 1)."""
    from tests.conftest import smoke_checkpoint

    path = tmp_path / "mlflow.db"
    uri = sqlite_uri(path)
    for name, value in (("edited", 30.0), ("kept", 20.0)):
        run = tracking.start_run(uri, "e", run_name=name, tags={"varnext.kind": "train"})
        tracking.log_metrics(uri, run, {"best_extrap_psnr_motion": value}, step=1)
        tracking.log_artifact(uri, run, smoke_checkpoint(tmp_path, name, 0), "checkpoint")
        tracking.end_run(uri, run)
    with sqlite3.connect(path) as db:
        for table in ("metrics", "latest_metrics"):
            db.execute(f"UPDATE {table} SET value = 'abc' WHERE value = 30.0")
    code, err = _best(uri, tmp_path / "o", capsys)
    assert code == 0, err
    assert '"run_name": "kept"' in (tmp_path / "o" / "run.json").read_text()
    assert tracking.usable_metric("abc") is False and tracking.usable_metric(b"1") is False


@pytest.fixture
def read_only_store(store: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the store seen through a read-only bind mount (skipped where this process
    may not mount: the suite runs as root on its CI machine)."""
    import subprocess

    source, view = tmp_path / "rw", tmp_path / "ro"
    source.mkdir()
    view.mkdir()
    shutil.copyfile(store, source / "mlflow.db")
    mounted = subprocess.run(["mount", "--bind", str(source), str(view)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {mounted.stderr.decode().strip()[:80]}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(view)], check=True)
        yield view / "mlflow.db"
    finally:
        subprocess.run(["umount", str(view)], check=True)


def test_a_read_only_store_is_refused_before_a_command_writes(
    read_only_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It passed every check; train failed on its first write (91 lines, exit 1), and best
    --register after downloading its checkpoint."""
    uri = sqlite_uri(read_only_store)
    tracking.check_reachable(uri, existing=True)  # reading is fine
    with pytest.raises(UserError, match="the MLflow database cannot be written"):
        tracking.check_reachable(uri)
    with pytest.raises(UserError, match="the MLflow database cannot be written"):
        tracking.open_store(uri, writes=True)
    from varnext_ray.cli import main

    out = read_only_store.parent.parent / "out"
    for argv in (
        ["best", "--experiment", "e", "--out", str(out), "--register", "m"],
        ["report", "--experiment", "e", "--out", str(out) + ".html"],
    ):
        assert main([*argv, "--tracking-uri", uri]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "the MLflow database cannot be written" in err[0], err
        assert not out.exists() and not Path(str(out) + ".html").exists()


# ---- hostile pass: %-escapes and in-memory databases in a SQLite URI -------------------------


@pytest.mark.parametrize("name", ["%69nventory.db", "u%2F2.db", "my%20runs/m.db", "a%00b.db"])
def test_a_percent_escape_in_a_sqlite_path_is_refused_and_nothing_is_made(
    name: str, other_program_db: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``%69nventory.db`` was checked as a new file of that name while MLflow opened (and wrote
    its tables into) ``inventory.db``; decoded for the checks, MLflow still made the folder
    ``my%20runs`` from the text as written (a stray folder, or exit 1 where a file had that
    name). A %-escape is refused, for reading and for writing, before anything is made."""
    monkeypatch.chdir(other_program_db.parent)
    before = sha256(other_program_db)
    uri = f"sqlite:///{other_program_db.parent}/{name}"
    for existing in (False, True):
        with pytest.raises(UserError, match="must not hold %-escapes"):
            tracking.check_reachable(uri, existing=existing)
    assert tracking_sqlite.database_file(uri) is None
    assert sha256(other_program_db) == before
    assert sorted(p.name for p in other_program_db.parent.iterdir()) == ["inventory.db"]


def test_best_refuses_an_escaped_store_with_one_line(
    store: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    escaped = f"sqlite:///{store.parent}/%6D{store.name[1:]}"  # %6D is the m of mlflow.db
    code, err = _best(escaped, tmp_path / "o", capsys)
    assert code == 2 and len(err) == 1 and "must not hold %-escapes" in err[0], err


@pytest.mark.parametrize("driver", ["sqlite+aiosqlite", "sqlite+pysqlcipher", "sqlite+nosuch"])
def test_a_sqlite_driver_mlflow_does_not_use_is_refused(driver: str, tmp_path: Path) -> None:
    """An uninstalled driver was "unexpected ModuleNotFoundError" (exit 1)."""
    with pytest.raises(UserError, match="with Python's sqlite3 module, not the"):
        tracking.check_reachable(f"{driver}:///{tmp_path}/m.db")


def test_five_slashes_name_the_same_store_as_four(store: Path) -> None:
    """``sqlite://///abs`` made a store that every later check called damaged: its path
    ``//abs`` became the host of the read-only ``file:`` URI the check opened."""
    five = f"sqlite:////{store}"
    assert tracking_sqlite.sqlite_path(five) == store
    tracking.check_reachable(five, existing=True)


@pytest.mark.parametrize(
    "uri", ["sqlite://", "sqlite:///:memory:", "sqlite:///%3Amemory%3A", "sqlite+pysqlite://"]
)
def test_an_in_memory_store_is_refused(
    uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sqlite:///:memory:`` was resolved into a file ``:memory:`` in the current folder, and
    training exited 0; an in-memory store loses every run when the command ends."""
    monkeypatch.chdir(tmp_path)
    resolved = tracking.resolve_tracking_uri(uri)
    for existing in (False, True):
        with pytest.raises(UserError, match="to a file, not an in-memory store"):
            tracking.check_reachable(resolved, existing=existing)
    assert list(tmp_path.iterdir()) == []


def test_best_refuses_an_in_memory_store_with_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code, err = _best("sqlite:///:memory:", tmp_path / "o", capsys)
    assert code == 2 and len(err) == 1 and "not an in-memory store" in err[0], err
    assert list(tmp_path.iterdir()) == []
