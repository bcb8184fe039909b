"""receive_upload streams a multipart file to disk: the file arrives byte-exact with the other
fields; too large is 413, a body cut off or without a file is 400, and nothing is left behind."""

from __future__ import annotations

import hashlib
import http.client
import io
import json
import os
import subprocess
import sys
import textwrap

import pytest
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from batchflow.exceptions import ConfigurationError, InvalidParams
from batchflow.uploads import display_name, receive_upload

BOUNDARY = "----batchflowtest"


def make_app(dest, max_bytes=10_000):
    app = Flask(__name__)

    @app.post("/upload")
    def upload():
        try:
            got = receive_upload(request, str(dest), max_bytes=max_bytes)
        except (InvalidParams, HTTPException) as exc:
            status = getattr(exc, "http_status", None) or exc.code
            return jsonify(error=str(getattr(exc, "description", None) or exc)), status
        return jsonify(
            path=got.path,
            filename=got.filename,
            size=got.size,
            form=got.form.to_dict(),
            request_form=request.form.to_dict(),
        )

    @app.post("/too-late")
    def too_late():
        request.form.get("x")
        receive_upload(request, str(dest), max_bytes=max_bytes)
        return "no"

    return app


def multipart(fields, files):
    out = io.BytesIO()
    for name, value in fields.items():
        out.write(f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for name, (filename, data) in files.items():
        out.write(
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="{filename}"\r\nContent-Type: text/csv\r\n\r\n'.encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{BOUNDARY}--\r\n".encode())
    return out.getvalue()


def post(client, body, length=None):
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    if length is not None:
        headers["Content-Length"] = str(length)
    return client.post("/upload", data=body, headers=headers)


def test_the_file_arrives_with_the_other_fields_and_owner_only(tmp_path):
    dest = tmp_path / "uploads"
    data = b"name,email\r\nAnn,a@example.com\r\n" * 100
    body = multipart(
        {"csrf_token": "tok", "mode": "fast"},
        {"file": ("..\\..\\C:\\evil\u202e/My Report.CSV", data), "other": ("x.txt", b"zzz")},
    )
    answer = post(make_app(dest).test_client(), body)
    assert answer.status_code == 200, answer.json
    got = answer.json
    assert got["filename"] == "My Report.CSV"
    assert got["size"] == len(data)
    assert got["form"] == {"csrf_token": "tok", "mode": "fast"}
    assert got["request_form"] == got["form"]  # a CSRF check afterwards finds its token
    assert os.path.dirname(got["path"]) == str(dest) and got["path"].endswith(".csv")
    with open(got["path"], "rb") as f:
        assert f.read() == data
    assert os.listdir(dest) == [os.path.basename(got["path"])]  # the other file part: deleted
    assert os.stat(dest).st_mode & 0o777 == 0o700
    assert os.stat(got["path"]).st_mode & 0o777 == 0o600


def test_over_the_limit_is_413_naming_it_and_leaves_nothing(tmp_path):
    dest = tmp_path / "uploads"
    body = multipart({}, {"file": ("big.csv", b"x" * 20_000)})
    answer = post(make_app(dest, max_bytes=10_240).test_client(), body)
    assert answer.status_code == 413
    assert answer.json["error"] == "The file is too large: uploads may take at most 10 KiB."
    assert not dest.exists() or os.listdir(dest) == []


def test_a_chunked_body_over_the_limit_is_413_as_it_is_read(tmp_path):
    dest = tmp_path / "uploads"
    app = make_app(dest, max_bytes=10_240)
    body = multipart({}, {"file": ("big.csv", b"x" * 20_000)})
    environ = {"wsgi.input_terminated": True}
    with app.test_request_context(
        "/upload",
        method="POST",
        input_stream=io.BytesIO(body),
        content_type=f"multipart/form-data; boundary={BOUNDARY}",
        environ_overrides=environ,
    ):
        from werkzeug.exceptions import RequestEntityTooLarge

        with pytest.raises(RequestEntityTooLarge, match="at most 10 KiB"):
            receive_upload(request, str(dest), max_bytes=10_240)
    assert os.listdir(dest) == []


def test_a_body_cut_off_is_400_and_leaves_nothing(tmp_path):
    """The client went away: fewer bytes arrived than its Content-Length said."""
    dest = tmp_path / "uploads"
    app = make_app(dest)
    body = multipart({"csrf_token": "t"}, {"file": ("a.csv", b"a,b\n" * 1000)})
    for cut in (len(body) - 10, len(body) // 2, 150, 0):
        for terminated in (False, True):
            environ = {"CONTENT_LENGTH": str(len(body))}
            if terminated:  # a server that ends the stream itself (gunicorn, chunked bodies)
                environ["wsgi.input_terminated"] = True
            with app.test_request_context(
                "/upload",
                method="POST",
                input_stream=io.BytesIO(body[:cut]),
                content_type=f"multipart/form-data; boundary={BOUNDARY}",
                environ_overrides=environ,
            ):
                with pytest.raises(InvalidParams) as raised:
                    receive_upload(request, str(dest), max_bytes=100_000)
            assert str(raised.value) == (
                "The upload was cut off before it ended: send the file again."
            ), (cut, terminated)
            assert os.listdir(dest) == []


def test_a_body_without_its_end_is_400(tmp_path):
    dest = tmp_path / "uploads"
    body = multipart({}, {"file": ("a.csv", b"a,b\n" * 1000)})
    cut = body[: body.index(f"\r\n--{BOUNDARY}--".encode())]
    answer = post(make_app(dest).test_client(), cut)
    assert answer.status_code == 400
    assert answer.json["error"].startswith("The upload was cut off")
    assert os.listdir(dest) == []


@pytest.mark.parametrize(
    "body",
    [
        multipart({"mode": "x"}, {}),
        multipart({}, {"file": ("", b"")}),  # the browser's "no file chosen"
        multipart({}, {"attachment": ("a.csv", b"a\n")}),
    ],
    ids=["no-file-field", "empty-filename", "other-field"],
)
def test_no_file_chosen_is_400_saying_so(tmp_path, body):
    dest = tmp_path / "uploads"
    answer = post(make_app(dest).test_client(), body)
    assert answer.status_code == 400
    assert answer.json["error"] == "Choose a file to upload, then send the form again."
    assert os.listdir(dest) == []


def test_not_multipart_is_400(tmp_path):
    answer = make_app(tmp_path).test_client().post("/upload", data={"a": "b"})
    assert answer.status_code == 400
    assert answer.json["error"].startswith("Choose a file to upload")


def test_a_body_read_before_is_a_configuration_error(tmp_path):
    app = make_app(tmp_path)
    app.testing = True
    body = multipart({}, {"file": ("a.csv", b"a\n")})
    with pytest.raises(ConfigurationError, match="call receive_upload first"):
        app.test_client().post(
            "/too-late",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        )


def test_display_name_keeps_only_a_clean_last_part():
    assert display_name("C:\\Users\\ann\\contacts.csv") == "contacts.csv"
    assert display_name("../../etc/passwd") == "passwd"
    assert display_name("a\u202etxt.exe\x00  b.csv") == "atxt.exe b.csv"
    assert display_name(None) == ""
    assert len(display_name("x" * 1000)) == 200


SERVER = textwrap.dedent(
    """
    import sys, threading
    from flask import Flask, jsonify, request
    from werkzeug.serving import make_server
    from batchflow.uploads import receive_upload

    app = Flask("uploads")

    def status():
        with open("/proc/self/status") as f:
            fields = dict(line.split(":", 1) for line in f)
        return {k: int(fields[k].split()[0]) * 1024 for k in ("VmRSS", "VmHWM")}

    @app.post("/upload")
    def upload():
        got = receive_upload(request, sys.argv[1], max_bytes=300 * 1024 * 1024)
        return jsonify(path=got.path, size=got.size)

    @app.get("/memory")
    def memory():
        return jsonify(status())

    server = make_server("127.0.0.1", 0, app, threaded=True)
    print(server.server_port, flush=True)
    server.serve_forever()
    """
)


@pytest.mark.slow
def test_a_200_mb_upload_through_a_real_server_keeps_its_memory_flat(tmp_path):
    """Measured: the server's peak RSS grows by a few MB for a 200 MB file."""
    dest = tmp_path / "uploads"
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__))}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(dest)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        port = int(server.stdout.readline())

        def call(method, path, body=None, headers=None):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
            conn.request(method, path, body=body, headers=headers or {})
            answer = conn.getresponse()
            data = answer.read()
            conn.close()
            return answer.status, data

        def send(size):
            digest = hashlib.sha256()
            head = (
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n'
                f'tok\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '
                f'filename="big.csv"\r\nContent-Type: text/csv\r\n\r\n'
            ).encode()
            tail = f"\r\n--{BOUNDARY}--\r\n".encode()
            chunk = b"".join(b"%07d,row,some text here,again\r\n" % n for n in range(2048))

            def body():
                yield head
                sent = 0
                while sent < size:
                    part = chunk[: size - sent]
                    digest.update(part)
                    sent += len(part)
                    yield part
                yield tail

            headers = {
                "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
                "Content-Length": str(len(head) + size + len(tail)),
            }
            status, data = call("POST", "/upload", body(), headers)
            assert status == 200, data[:500]
            return json.loads(data), digest.hexdigest()

        send(1_000_000)  # warm up: imports, the parser's buffers
        before = json.loads(call("GET", "/memory")[1])
        size = 200 * 1024 * 1024
        got, expected = send(size)
        after = json.loads(call("GET", "/memory")[1])
        assert got["size"] == size
        digest = hashlib.sha256()
        with open(got["path"], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        assert digest.hexdigest() == expected
        growth = after["VmHWM"] - before["VmRSS"]
        print(
            f"server RSS {before['VmRSS'] >> 20} MiB, peak after 200 MB {after['VmHWM'] >> 20} MiB"
        )
        assert growth < 20 * 1024 * 1024, growth
    finally:
        server.terminate()
        server.wait(10)
        server.stdout.close()
