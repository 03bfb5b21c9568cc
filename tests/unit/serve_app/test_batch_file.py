"""The batch job's file format, resume bookkeeping, grouping and progress, without Ray."""

import base64
import json

from serve_app.jobs.batch import _transient, batch_share, group_of, plan
from serve_app.jobs.batch_file import (
    BadLine,
    Request,
    answered,
    bad_line,
    read_input,
    result_line,
    save_images,
)
from serve_app.jobs.progress import Progress

CATALOGUE = {
    "llm": {"kind": "text", "adapters": ["sql", "poet"], "slots": 64},
    "sd": {"kind": "image", "adapters": ["a", "b"], "slots": 8},
}


def _line(cid, url="/v1/completions", **body):
    return json.dumps({"custom_id": cid, "method": "POST", "url": url, "body": body})


def test_read_input_parses_good_and_names_bad_lines(tmp_path):
    p = tmp_path / "in.jsonl"
    rows = [
        _line("a", model="llm"),
        "not json",
        "",
        json.dumps({"url": "/v1/completions", "body": {}}),
        _line("b", url="/v1/embeddings"),
        _line("a", model="llm"),
        json.dumps({"custom_id": "c", "method": "GET", "url": "/v1/completions", "body": {}}),
    ]
    p.write_text("\n".join(rows) + "\n")
    items = read_input(p)
    assert isinstance(items[0], Request) and items[0].line == 1
    bad = {it.line: it for it in items if isinstance(it, BadLine)}
    assert sorted(bad) == [2, 4, 5, 6, 7]  # the blank line 3 is not a request
    assert bad[2].custom_id is None and "not valid JSON" in bad[2].message
    assert bad[4].param == "custom_id"
    assert bad[5].custom_id == "b" and bad[5].param == "url"
    assert bad[6].custom_id is None and "duplicate" in bad[6].message  # resume matches by id
    assert bad[7].param == "method"


def test_output_lines_carry_status_body_and_error():
    ok = result_line(3, "x", 200, {"choices": []})
    assert ok["error"] is None and ok["response"]["status_code"] == 200
    assert ok["id"].startswith("batch_req_") and ok["response"]["request_id"]
    err = {"error": {"message": "no", "type": "not_found_error", "param": None, "code": 404}}
    line = result_line(7, "y", 404, err)
    assert line["error"] == {**err["error"], "line": 7}
    assert line["response"]["body"] == err
    bad = bad_line(BadLine(9, None, "broken", "custom_id"))
    assert bad["custom_id"] is None and bad["error"]["line"] == 9 and bad["error"]["code"] == 400


def test_answered_reads_ids_and_lines_and_cuts_a_partial_line(tmp_path):
    out = tmp_path / "out.jsonl"
    assert answered(out) == (set(), set())
    full = [result_line(1, "a", 200, {}), bad_line(BadLine(2, None, "x"))]
    out.write_text("".join(json.dumps(x) + "\n" for x in full) + '{"id": "trunc')
    assert answered(out) == ({"a"}, {2})
    assert out.read_text().endswith("\n") and "trunc" not in out.read_text()


def test_plan_skips_what_is_answered():
    items = [
        Request(1, "a", "/v1/completions", {}),
        Request(2, "b", "/v1/completions", {}),
        BadLine(3, None, "x"),
        BadLine(4, None, "y"),
        BadLine(5, "c", "z"),
    ]
    todo, skipped = plan(items, {"a", "c"}, {3})
    assert [it.line for it in todo] == [2, 4] and skipped == 3


def test_groups_follow_the_adapter_the_app_would_resolve():
    def g(url="/v1/completions", **body):
        return group_of(Request(1, "x", url, body), CATALOGUE)

    assert g(model="llm") == ("llm", "llm")
    assert g(model="llm:sql") == g(model="sql") == ("llm", "llm:sql")
    assert g(model="nope") == ("?", "?")
    img = "/v1/images/generations"
    assert g(img) == ("sd", "sd")  # the only image base is the default
    mix = [{"name": "b"}, {"name": "a"}]
    assert g(img, model="sd:a", adapters=mix) == g(img, adapters=mix) == ("sd", "sd:a+b")


def test_only_server_errors_are_retried():
    assert _transient(503, {"error": {"type": "whatever"}})
    assert _transient(500, {"error": {"type": "server_error"}})
    assert not _transient(504, {"error": {"type": "adapter_source_error"}})
    assert not _transient(404, {"error": {"type": "not_found_error"}})
    assert not _transient(200, {"choices": []})


def test_save_images_writes_pngs_and_references_them(tmp_path):
    body = {"created": 1, "data": [{"b64_json": base64.b64encode(b"png").decode()}]}
    out = save_images(body, "job/1", tmp_path)
    path = out["data"][0]["path"]
    assert "b64_json" not in out["data"][0] and open(path, "rb").read() == b"png"
    assert save_images(body, "job_1", tmp_path)["data"][0]["path"] != path


def test_progress_counts_and_summarises():
    p = Progress(total=3, skipped=2)
    for k in ("a", "a", "b"):
        p.expect(k)
    p.start("a")
    assert "a 0/2" in p.line()
    p.finish("a", 200, 0.5)
    p.start("a")
    p.finish("a", 404, 0.1)
    p.finish("b", 400, 0.0, started=False)
    assert (p.done, p.errors) == (3, 2)
    text = "\n".join(p.summary())
    assert "2 skipped" in text and "404: 1" in text and "3/3 100%" in p.line()


def test_a_batch_leaves_a_quarter_of_the_slots_to_online_traffic():
    assert [batch_share(s) for s in (1, 2, 4, 8, 64, 128)] == [1, 1, 3, 6, 48, 96]
    for slots in range(2, 300):
        assert slots - batch_share(slots) >= max(1, slots // 4)
