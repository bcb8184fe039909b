"""Benchmarks 8-11: resumable sources, batch changes, imports and uploads.

8. A keyset export of a PostgreSQL table (FileJob + KeysetSource, through the run's worker)
   against a plain loop of the same keyset queries and CSV writes, replaying the page sizes the
   job used; and OFFSET paging (the wrong way) against keyset paging at two table sizes.
9. A batch change (ItemsJob + ``change_batch``, one pipeline per step) against a plain loop of the
   same pipelines (same batch sizes), and against the same job changing one item at a time.
10. An import (ImportJob over a CSV with a few % bad rows): the job's Redis memory at 10 %, 50 %
   and 100 %, against its errors hash; rows/s against a plain loop of the same checks.
11. The web process's memory while it receives a large multipart upload through a real server.

PostgreSQL (benchmark 8) is a database of the run's own, ``batchflow_bench_<random>`` on
127.0.0.1:5432 (user postgres, trust auth), dropped at the end WITH (FORCE).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import http.client
import json
import os
import secrets
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from batchflow.files import neutralize_cell as cell
from batchflow.imports import upload_path
from batchflow.keys import new_job_id
from batchflow.schema import is_terminal
from bench.harness import ROOT, Context, wait_for
from bench.source_handlers import (
    ContactRow,
    apply_contact,
    bump_pipeline,
    db_engine,
    people_table,
)

if TYPE_CHECKING:
    from bench.run import Report

PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5"


def rate(x: float) -> str:
    return f"{x / 1e6:.2f}M/s" if x >= 1e6 else f"{x / 1e3:.1f}k/s" if x >= 1e4 else f"{x:,.0f}/s"


def secs(values: list[float]) -> str:
    return ", ".join(f"{x:.2f} s" for x in values)


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def pairs(reps: int, a: Callable[[], Any], b: Callable[[], Any]) -> tuple[list[Any], list[Any]]:
    """``reps`` interleaved pairs (a b, b a, a b, ...): noise weighs on both sides alike."""
    out_a, out_b = [], []
    for i in range(reps):
        if i % 2:
            out_b.append(b())
            out_a.append(a())
        else:
            out_a.append(a())
            out_b.append(b())
    return out_a, out_b


def wait_done(ctx: Context, job_id: str, timeout: float) -> dict[str, str]:
    key = ctx.engine.store.keys.job(job_id)
    wait_for(lambda: is_terminal(ctx.polled("HGET", key, "status")), timeout, 0.02, job_id)
    fields = ctx.r.hgetall(key)
    if fields["status"] != "completed":
        raise RuntimeError(f"job {job_id} ended {fields['status']}: {fields.get('error')}")
    return fields


def sizes_of(ctx: Context, key: str) -> list[int]:
    return [int(x) for x in ctx.r.lrange(key, 0, -1)]


# -- 8. keyset export from PostgreSQL ------------------------------------------------------------


@contextlib.contextmanager
def bench_database() -> Iterator[str]:
    """A new PostgreSQL database of this run's own (SQLAlchemy URL), dropped WITH (FORCE)."""
    import psycopg
    from psycopg import sql

    name = f"batchflow_bench_{secrets.token_hex(5)}"
    try:
        admin = psycopg.connect(PG_ADMIN, autocommit=True)
    except psycopg.OperationalError as error:
        raise RuntimeError(
            f"Benchmark 8 needs PostgreSQL at 127.0.0.1:5432, user postgres, trust auth: {error}"
        ) from None
    with admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    try:
        yield url
    finally:
        with contextlib.suppress(Exception):
            db_engine(url).dispose()
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def fill_table(url: str, name: str, n: int) -> Any:
    from sqlalchemy import text

    table = people_table(name)
    engine = db_engine(url)
    table.create(engine)
    with engine.begin() as connection:
        connection.execute(
            text(
                f"INSERT INTO {name} (id, name, email) SELECT g, 'person ' || g, "
                f"'person' || g || '@example.com' FROM generate_series(1, :n) AS g"
            ),
            {"n": n},
        )
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(text(f"VACUUM ANALYZE {name}"))
    return table


def keyset_loop(url: str, table: Any, sizes: list[int], path: str, upper: int) -> int:
    """The plain loop: ``WHERE id > cursor ORDER BY id LIMIT k`` pages of the given sizes (the
    last one repeated), each written with csv.writer, every cell through batchflow's public
    ``neutralize_cell`` as the FileJob does (the same bytes); returns the rows written."""
    from sqlalchemy import select

    written, cursor, page = 0, 0, 0
    with db_engine(url).connect() as connection, open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "email"])
        while True:
            size = sizes[min(page, len(sizes) - 1)]
            query = (
                select(table)
                .where(table.c.id > cursor, table.c.id <= upper)
                .order_by(table.c.id)
                .limit(size)
            )
            rows = connection.execute(query).all()
            writer.writerows([cell(row.id), cell(row.name), cell(row.email)] for row in rows)
            written += len(rows)
            page += 1
            if len(rows) < size:
                return written
            cursor = rows[-1].id


def offset_loop(url: str, table: Any, size: int, upper: int, path: str) -> int:
    """The wrong way: ``ORDER BY id OFFSET n LIMIT k`` pages over the rows ``id <= upper``."""
    from sqlalchemy import select

    written = 0
    with db_engine(url).connect() as connection, open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "name", "email"])
        while True:
            query = (
                select(table)
                .where(table.c.id <= upper)
                .order_by(table.c.id)
                .offset(written)
                .limit(size)
            )
            rows = connection.execute(query).all()
            writer.writerows((row.id, row.name, row.email) for row in rows)
            written += len(rows)
            if len(rows) < size:
                return written


def same_bytes(a: str, b: str) -> bool:
    """Whether two files hold the same bytes."""
    if os.path.getsize(a) != os.path.getsize(b):
        return False
    with open(a, "rb") as one, open(b, "rb") as other:
        while True:
            x, y = one.read(1 << 20), other.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def count_lines(path: str) -> int:
    with open(path, "rb") as handle:
        return sum(block.count(b"\n") for block in iter(lambda: handle.read(1 << 20), b""))


def bench_export(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag, n = "8", opts.rows
    with bench_database() as url:
        t0 = time.perf_counter()
        table = fill_table(url, "people", n)
        fill = time.perf_counter() - t0
        last_sizes: list[int] = []
        exported: list[str] = []

        def ours() -> float:
            sizes = ctx.key("sizes", uuid.uuid4().hex[:8])
            params = {"url": url, "table": "people", "sizes": sizes}
            start = time.time()
            job_id = ctx.engine.start("people-export", owner="bench", params=params)
            fields = wait_done(ctx, job_id, 600)
            assert int(fields["total"]) == n and count_lines(fields["file_path"]) == n + 1
            exported[:] = [fields["file_path"]]
            last_sizes[:] = sizes_of(ctx, sizes)
            return float(fields["finished_at"]) - start

        def plain() -> float:
            path = os.path.join(ctx.tmp, "plain.csv")
            start = time.perf_counter()
            written = keyset_loop(url, table, last_sizes, path, n)
            elapsed = time.perf_counter() - start
            assert written == n and same_bytes(path, exported[0])
            return elapsed

        ours()  # warm-up: the worker's imports and connections; the sizes for the first loop
        plain()
        our_t, plain_t = pairs(opts.reps, ours, plain)
        ratio = best(plain_t) / best(our_t)
        rep.row(
            tag,
            f"keyset CSV export, PostgreSQL ({n:,} rows) vs plain loop",
            rate(n / best(our_t)),
            rate(n / best(plain_t)),
            f"{ratio:.2f}x",
            ">= 0.9x",
            verdict(ratio >= 0.9),
        )
        rep.note(
            tag,
            f"A table of {n:,} rows (id, name, email) in a database of the run's own (filled "
            f"with generate_series and VACUUM ANALYZE in {fill:.1f} s). batchflow: a FileJob "
            f"with KeysetSource(select(table), key=id), rows() + header, default (adaptive) step "
            f"size, one solo worker; start() (which plans: a NULL-key check and a count) to the "
            f"last commit: {secs(our_t)}; {len(last_sizes)} pages of "
            f"{', '.join(map(str, last_sizes[:8]))}{', ...' if len(last_sizes) > 8 else ''} "
            f"rows. Plain loop in this process: the same SQLAlchemy Core keyset queries on one "
            f"connection (WHERE id > cursor ORDER BY id LIMIT k, k replaying the page sizes of "
            f"the previous batchflow run) and csv.writer, each cell through batchflow's "
            f"neutralize_cell as the FileJob does (the file is checked byte for byte against "
            f"batchflow's): {secs(plain_t)}.",
        )
        offset_vs_keyset(ctx, opts, rep, url, table)


def offset_vs_keyset(
    ctx: Context, opts: argparse.Namespace, rep: Report, url: str, table: Any
) -> None:
    page, path = 5000, os.path.join(ctx.tmp, "paged.csv")
    lines = []
    for upper in (opts.rows // 10, opts.rows):

        def offset(upper: int = upper) -> float:
            start = time.perf_counter()
            assert offset_loop(url, table, page, upper, path) == upper
            return time.perf_counter() - start

        def keyset(upper: int = upper) -> float:
            start = time.perf_counter()
            assert keyset_loop(url, table, [page], path, upper) == upper
            return time.perf_counter() - start

        off_t, key_t = pairs(max(1, opts.reps - 1), offset, keyset)
        off, key = best(off_t), best(key_t)
        rep.row(
            "8",
            f"OFFSET paging vs keyset, plain loops, pages of {page:,} ({upper:,} rows)",
            rate(upper / off),
            rate(upper / key),
            f"{key / off:.2f}x",
            "info",
        )
        lines.append(f"{upper:,} rows: OFFSET {secs(off_t)}; keyset {secs(key_t)}")
    rep.note(
        "8",
        f"OFFSET paging (ORDER BY id OFFSET n LIMIT {page}) against keyset paging (WHERE id > "
        f"cursor ORDER BY id LIMIT {page}), both plain loops writing CSV, over the rows id <= "
        f"N of the same table: {'; '.join(lines)}. Each OFFSET page skips every row before "
        f"it, so the whole walk costs O(N^2 / page): ten times the rows, about a hundred times "
        f"the skipping.",
    )


def best(values: list[float]) -> float:
    return min(values)


# -- 9. batch change ---------------------------------------------------------------------------


def bench_batch(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag, n = "9", opts.batch_items
    last_sizes: list[int] = []

    def job(handler: str) -> Callable[[], float]:
        def run() -> float:
            key, sizes = ctx.key("bump", uuid.uuid4().hex[:8]), ctx.key("sizes", uuid.uuid4().hex)
            params = {"n": n, "key": key, "sizes": sizes}
            start = time.time()
            job_id = ctx.engine.start(handler, owner="bench", params=params)
            fields = wait_done(ctx, job_id, 600)
            assert int(fields["good"]) == n and ctx.r.hlen(key) == n
            if handler == "batch-bump":
                last_sizes[:] = sizes_of(ctx, sizes)
                assert sum(last_sizes) == n
            ctx.r.unlink(key, sizes)
            return float(fields["finished_at"]) - start

        return run

    def plain() -> float:
        key, sizes = ctx.key("bump", uuid.uuid4().hex[:8]), ctx.key("sizes", uuid.uuid4().hex)
        start = time.perf_counter()
        first = 1
        for size in last_sizes:
            bump_pipeline(key, sizes, range(first, first + size))
            first += size
        elapsed = time.perf_counter() - start
        assert ctx.r.hlen(key) == n
        ctx.r.unlink(key, sizes)
        return elapsed

    job("batch-bump")()  # warm-up, and the batch sizes of the first plain loop
    plain()
    batch_t, plain_t = pairs(opts.item_reps, job("batch-bump"), plain)
    item_t = [job("item-bump")() for _ in range(max(1, opts.reps - 1))]
    b, p, i = best(batch_t), best(plain_t), best(item_t)
    rep.row(
        tag,
        f"change_batch items/s, 1 pipeline per step ({n:,}) vs plain loop",
        rate(n / b),
        rate(n / p),
        f"{p / b:.2f}x",
        ">= 0.9x",
        verdict(p / b >= 0.9),
    )
    rep.row(
        tag,
        f"change_batch vs the same job's per-item change ({n:,})",
        rate(n / b),
        rate(n / i),
        f"{i / b:.1f}x",
        ">= 5x",
        verdict(i / b >= 5),
    )
    rep.note(
        tag,
        f"An ItemsJob over a small Source of 1..{n:,} (no ids stored in Redis; the cursor is "
        f"the last number), default (adaptive) step size, one solo worker. change_batch: one "
        f"pipeline per step, an HINCRBY <key> <item> 1 per item plus an RPUSH of the slice's "
        f"size: {secs(batch_t)} ({len(last_sizes)} steps, slices "
        f"{', '.join(map(str, last_sizes[:10]))}{', ...' if len(last_sizes) > 10 else ''}). "
        f"Plain loop in this process: the same pipelines, replaying the previous batch run's "
        f"slice sizes: {secs(plain_t)}. Per-item change (one HINCRBY round trip per item, "
        f"outcome and checkpoint per item): {secs(item_t)}.",
    )


# -- 10. import memory ---------------------------------------------------------------------------


def write_contacts(path: str, n: int) -> int:
    """A CSV of ``n`` contacts; every 33rd row is bad (by turns: no name, a bad email, an age
    over 150). Returns the number of bad rows."""
    bad = 0
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "email", "age"])
        for k in range(1, n + 1):
            name, email, age = f"Person {k}", f"person{k}@example.com", str(20 + k % 60)
            if k % 33 == 0:
                bad += 1
                kind = (k // 33) % 3
                name = "" if kind == 0 else name
                email = f"person{k} at example.com" if kind == 1 else email
                age = "200" if kind == 2 else age
            writer.writerow([name, email, age])
    return bad


def job_memory(ctx: Context, job_id: str) -> tuple[int, int]:
    """(bytes of all the job's keys, bytes of its errors hash): MEMORY USAGE ... SAMPLES 0 summed
    over SCAN MATCH <prefix>:{<job id>}*."""
    total = errors = 0
    errors_key = ctx.engine.store.keys.errors(job_id)
    for key in ctx.r.scan_iter(match=f"{ctx.prefix}:{{{job_id}}}*", count=1000):
        size = int(ctx.r.memory_usage(key, samples=0) or 0)
        total += size
        errors += size if key == errors_key else 0
    return total, errors


#: Import jobs whose counts did not add up to the file's rows (reported, not raised).
MISCOUNTS: list[str] = []


def run_import(ctx: Context, source: str, n: int) -> tuple[float, list[tuple[float, int, int]]]:
    """One import job over a copy of ``source``; its time and (done share, memory, errors
    memory) at about 10 %, 50 % and 100 %."""
    job_id = new_job_id()
    target = upload_path(ctx.settings.files_dir, job_id)
    os.makedirs(os.path.dirname(target))
    os.link(source, target)
    key, samples, marks = ctx.engine.store.keys.job(job_id), [], [0.1, 0.5]
    start = time.time()
    ctx.engine.submit("import-contacts", owner="bench", params={}, job_id=job_id)
    while True:
        status, good, bad = ctx.polled("HMGET", key, "status", "good", "bad")
        done = (int(good or 0) + int(bad or 0)) / n
        if is_terminal(status):
            break
        if marks and done >= marks[0]:
            samples.append((done, *job_memory(ctx, job_id)))
            while marks and done >= marks[0]:
                marks.pop(0)
        time.sleep(0.01)
    fields = wait_done(ctx, job_id, 10)
    samples.append((1.0, *job_memory(ctx, job_id)))
    elapsed = float(fields["finished_at"]) - start
    counted = (int(fields["good"]), int(fields["bad"]))
    if sum(counted) != n:
        MISCOUNTS.append(
            f"job {job_id}: {n:,} rows counted good {counted[0]:,} + bad {counted[1]:,} = "
            f"{sum(counted):,}; recoveries {fields.get('recoveries')}, steps {fields.get('seq')}, "
            f"checkpoints {fields.get('checkpoints')}, attempts {fields.get('attempts')}"
        )
    return elapsed, [*samples, (-1.0, *counted)]


def plain_import(path: str) -> tuple[float, int, int]:
    """The same reading, checks and apply in one process: csv.DictReader, the WTForms form,
    the rejected rows' messages kept in a dict."""
    from batchflow.imports import form_errors

    start = time.perf_counter()
    good, errors = 0, {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        for k, row in enumerate(csv.DictReader(handle), start=1):
            form = ContactRow(data=None, formdata=_Row(row), meta={"csrf": False})
            if form.validate():
                apply_contact(dict(form.data))
                good += 1
            else:
                errors[str(k)] = form_errors(form.errors)
    return time.perf_counter() - start, good, len(errors)


class _Row:
    """A CSV row as WTForms reads form data."""

    def __init__(self, row: dict[str, str]) -> None:
        self.row = row

    def __contains__(self, name: object) -> bool:
        return name in self.row

    def __iter__(self) -> Iterator[str]:
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)

    def getlist(self, name: str) -> list[str]:
        return [self.row[name]] if name in self.row else []


def bench_import(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag, n = "10", opts.import_rows
    source = os.path.join(ctx.tmp, "contacts.csv")
    bad = write_contacts(source, n)
    size = os.path.getsize(source)
    warm = os.path.join(ctx.tmp, "warm-up.csv")
    warm_bad = write_contacts(warm, 2000)
    assert run_import(ctx, warm, 2000)[1][-1][1:] == (2000 - warm_bad, warm_bad)
    runs, plain_runs = pairs(
        max(1, opts.reps - 1), lambda: run_import(ctx, source, n), lambda: plain_import(source)
    )
    exact = sum(1 for _, samples in runs if samples[-1][1:] == (n - bad, bad))
    for _, good, rejected in plain_runs:
        assert (good, rejected) == (n - bad, bad)
    ours, plain = best([t for t, _ in runs]), best([t for t, _, _ in plain_runs])
    samples = runs[-1][1][:-1]
    rep.row(
        tag,
        f"import rows/s, WTForms check per row ({n:,} rows, {bad:,} bad) vs plain loop",
        rate(n / ours),
        rate(n / plain),
        f"{plain / ours:.2f}x",
        "info",
    )
    rep.row(
        tag,
        "import jobs whose good + bad = the file's rows, exactly",
        f"{exact} of {len(runs)}",
        "-",
        "-",
        "all",
        verdict(exact == len(runs)),
    )
    for text in MISCOUNTS:
        rep.note(tag, f"Counted wrong: {text} (expected good {n - bad:,} + bad {bad:,}).")
    others = [total - errors for _, total, errors in samples]
    final_total, final_errors = samples[-1][1], samples[-1][2]
    rep.row(
        tag,
        "job's Redis memory without its errors hash, at 10 % / 50 % / 100 %",
        " / ".join(f"{x / 1024:.1f} KiB" for x in others),
        "-",
        f"{max(others) / min(others):.2f}x",
        "O(1)",
        verdict(max(others) - min(others) < 16 * 1024),
    )
    rep.row(
        tag,
        "job's Redis memory at 100 %: all keys vs the errors hash",
        f"{final_total / 1024:.0f} KiB",
        f"{final_errors / 1024:.0f} KiB",
        f"{final_total / max(final_errors, 1):.3f}x",
        "info",
    )
    rep.note(
        tag,
        f"A CSV of {n:,} rows (name, email, age; {size / 1e6:.0f} MB; every 33rd row bad: no "
        f"name, a bad email or an age over 150, {bad:,} in all) placed at "
        f"upload_path(files_dir, job_id) and started with engine.submit(..., job_id=...), as "
        f"the upload route does; an ImportJob with a WTForms row_form and an apply() that does "
        f"no I/O and returns no result; one solo worker. Submit to the last commit: "
        f"{secs([t for t, _ in runs])}. Plain loop in this process (csv.DictReader, the same "
        f"form, messages in a dict): {secs([t for t, _, _ in plain_runs])}.",
    )
    rep.note(
        tag,
        "Memory = MEMORY USAGE <key> SAMPLES 0 summed over SCAN MATCH <prefix>:{<job id>}*, at "
        "the first poll past 10 % and 50 % and at the end: "
        + "; ".join(
            f"{done:.0%} done: {total / 1024:.1f} KiB, of which errors {errors / 1024:.1f} KiB"
            for done, total, errors in samples
        )
        + f". The errors hash holds one message per rejected row "
        f"({final_errors / max(bad, 1):.0f} bytes each); nothing else grows with the rows.",
    )


# -- 11. upload memory -------------------------------------------------------------------------

UPLOAD_SERVER = textwrap.dedent(
    """
    import json, sys
    from flask import Flask, jsonify
    from werkzeug.serving import make_server
    from batchflow import BatchFlow
    from bench.handlers import make_registry

    app = Flask("bench-uploads")
    app.config.update(SECRET_KEY="bench", **json.loads(sys.argv[1]))
    BatchFlow(app, registry=make_registry(), identity=lambda: "bench", csrf=False)

    @app.get("/memory")
    def memory():
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return jsonify({k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")})

    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()
    """
)
BOUNDARY = "batchflowbenchboundary"


def post_upload(port: int, size: int) -> tuple[int, bytes]:
    """POST /jobs/start/import-contacts with a CSV of ``size`` bytes streamed from a generator."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="big.csv"\r\n'
        f"Content-Type: text/csv\r\n\r\nname,email,age\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    chunk = b"".join(b"Person %07d,p%07d@example.com,42\r\n" % (k, k) for k in range(2048))

    def body() -> Iterator[bytes]:
        yield head
        sent = 0
        while sent < size:
            part = chunk[: size - sent]
            sent += len(part)
            yield part
        yield tail

    headers = {
        "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
        "Content-Length": str(len(head) + size + len(tail)),
        "Accept": "application/json",
    }
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    conn.request("POST", "/jobs/start/import-contacts", body=body(), headers=headers)
    answer = conn.getresponse()
    data = answer.read()
    conn.close()
    return answer.status, data


def get_memory(port: int) -> dict[str, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/memory")
    data = json.loads(conn.getresponse().read())
    conn.close()
    return data


def bench_upload(ctx: Context, opts: argparse.Namespace, rep: Report) -> None:
    tag, size = "11", opts.upload_mb * 1024 * 1024
    config = {
        **ctx.config,
        "BATCHFLOW_UPLOAD_MAX_BYTES": size + 1024 * 1024,
        # No worker consumes this queue: the imports are received and enqueued, never run.
        "BATCHFLOW_QUEUE": f"{ctx.queue}.uploads",
        "BATCHFLOW_CELERY": {
            "broker_transport_options": {"global_keyprefix": f"{ctx.prefix}:broker:"}
        },
    }
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen(
        [sys.executable, "-c", UPLOAD_SERVER, json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,  # werkzeug's request log
        text=True,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    from bench import harness

    harness._PROCESSES.append(server)
    try:
        port = int(server.stdout.readline())
        status, data = post_upload(port, 1_000_000)  # warm-up: imports, the parser's buffers
        assert status in (200, 202), data[:500]
        before = get_memory(port)
        start = time.perf_counter()
        status, data = post_upload(port, size)
        elapsed = time.perf_counter() - start
        after = get_memory(port)
        assert status in (200, 202), data[:500]
        job_id = json.loads(data)["id"]
        got = os.path.getsize(upload_path(ctx.settings.files_dir, job_id))
        assert got >= size, (got, size)
    finally:
        harness._stop_process(server)
        harness._PROCESSES.remove(server)
        if server.stdout:
            server.stdout.close()
    growth = after["VmHWM"] - before["VmRSS"]
    rep.row(
        tag,
        f"web process RSS growth receiving a {opts.upload_mb:,} MiB upload",
        f"{growth / 2**20:.1f} MiB",
        "-",
        "-",
        "< 20 MiB",
        verdict(growth < 20 * 2**20),
    )
    rep.note(
        tag,
        f"A Flask app with BatchFlow and an ImportJob, served by werkzeug's threaded server in "
        f"a subprocess; POST /jobs/start/import-contacts, multipart/form-data with a "
        f"Content-Length, the body streamed by http.client from a generator "
        f"(chunks of about 70 KiB): "
        f"{size / 2**20:,.0f} MiB in {elapsed:.1f} s ({size / 2**20 / elapsed:.0f} MiB/s, "
        f"the file written to the job's folder, its header checked, the job enqueued on a "
        f"queue no worker consumes). Server VmRSS before (after a 1 MB warm-up) "
        f"{before['VmRSS'] / 2**20:.1f} MiB; VmHWM (peak) after {after['VmHWM'] / 2**20:.1f} "
        f"MiB, VmRSS after {after['VmRSS'] / 2**20:.1f} MiB; growth = peak after - RSS before.",
    )
