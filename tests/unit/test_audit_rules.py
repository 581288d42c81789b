"""The audit log's rules pinned one at a time (issue 23): the development key made in a new folder, the head
beside the log catching a truncated log on its own, and the put-if-absent retry on S3 (with a stand-in client:
only a lost race is retried, any other error is raised)."""

import json
import sys
import types

import pytest

from gpdata import audit, settings
from gpdata.errors import GpdataError


def test_the_development_key_is_made_once_in_a_new_folder(tmp_path):
    env = {"GPDATA_HOME": str(tmp_path), "GPDATA_SECRETS_DIR": str(tmp_path / "a" / "b")}
    key = audit.audit_key(env)
    assert len(key) == 32 and (tmp_path / "a" / "b" / "dev-audit.key").exists()
    assert audit.audit_key(env) == key


def test_the_head_beside_the_log_catches_a_truncated_log_without_the_published_head(home):
    root = settings.load().store
    for i in range(3):
        audit.append(root, "extract", project=f"P{i}")
    audit.published_head_path().unlink()
    log = audit.audit_dir(root) / "audit.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    with pytest.raises(GpdataError, match="the head records 3 entries but the log holds 2"):
        audit.verify(root)


class _Entry:
    def __init__(self, name, doc):
        self.name, self._doc = name, doc

    def read_text(self):
        return json.dumps(self._doc)


class _Folder:
    """Stands in for an s3:// StorePath of the audit folder."""

    storage_options = {"endpoint_url": None, "region": "eu-west-2", "key": "k", "secret": "s", "token": None}

    def __init__(self, objects):
        self.objects = objects

    def __str__(self):
        return "s3://bucket/store/_audit"

    def __truediv__(self, name):
        return self

    def glob(self, pattern):
        return [_Entry(k, v) for k, v in sorted(self.objects.items())]


class _ClientError(Exception):
    def __init__(self, code):
        self.response = {"Error": {"Code": code}}


def _client(objects, failures):
    def put_object(Bucket, Key, IfNoneMatch, Body):  # noqa: N803 (boto3's names)
        if failures:
            raise _ClientError(failures.pop(0))
        objects[Key.rsplit("/", 1)[1]] = json.loads(Body)

    return types.SimpleNamespace(put_object=put_object)


@pytest.fixture
def fake_s3(monkeypatch):
    objects, failures = {}, []
    monkeypatch.setitem(sys.modules, "boto3", types.SimpleNamespace(client=lambda *a, **k: _client(objects, failures)))
    monkeypatch.setitem(sys.modules, "botocore.exceptions", types.SimpleNamespace(ClientError=_ClientError))
    return objects, failures


def test_a_writer_that_loses_the_race_retries_and_any_other_error_is_raised(fake_s3):
    objects, failures = fake_s3
    key = bytes(32)
    failures += ["PreconditionFailed", "ConditionalRequestConflict"]
    entry = audit._append_s3(_Folder(objects), key, "extract", {"project": "P1"})
    assert entry["seq"] == 1 and list(objects) == ["000000000001.json"] and not failures
    assert audit._append_s3(_Folder(objects), key, "extract", {"project": "P2"})["prev_hash"] == entry["hash"]
    failures.append("AccessDenied")
    with pytest.raises(_ClientError):
        audit._append_s3(_Folder(objects), key, "extract", {"project": "P3"})
    failures += ["PreconditionFailed"] * audit._S3_RETRIES
    with pytest.raises(GpdataError, match="lost the race"):
        audit._append_s3(_Folder(objects), key, "extract", {"project": "P4"})
    assert len(objects) == 2


def test_the_head_on_s3_is_the_last_entry_object(fake_s3, monkeypatch):
    objects, _ = fake_s3
    folder = _Folder(objects)
    monkeypatch.setattr(audit, "audit_dir", lambda root: folder)
    monkeypatch.setattr(audit.storage, "is_remote", lambda path: path is folder)
    assert audit.head("s3://bucket/store") == {"seq": 0, "hash": audit.GENESIS}
    audit._append_s3(folder, bytes(32), "extract", {"project": "P1"})
    last = audit._append_s3(folder, bytes(32), "extract", {"project": "P2"})
    assert audit.head("s3://bucket/store") == {"seq": 2, "hash": last["hash"]}


def test_the_published_head_is_never_moved_to_a_rewritten_entry_of_the_same_number(home):
    root = settings.load().store
    for i in range(3):
        audit.append(root, "extract", project=f"P{i}")
    log = audit.audit_dir(root) / "audit.jsonl"
    kept = log.read_text().splitlines(keepends=True)[:2]
    log.write_text("".join(kept))
    second = json.loads(kept[1])
    (audit.audit_dir(root) / "audit.head").write_text(json.dumps({"seq": 2, "hash": second["hash"]}))
    audit.append(root, "extract", project="rewritten")  # entry 3 again, with another hash
    with pytest.raises(GpdataError, match="entry 3 differs from the head published in the register"):
        audit.verify(root)
