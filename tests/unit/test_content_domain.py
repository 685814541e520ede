"""The pure rules of seed 004 content: paths, ResourceInfo, PATCH merging, Content-Type, timestamps."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from schemas import content_rules as rules
from schemas.content import ResourceSettings, ResourceSettingsPatch
from schemas.content_rules import ContentError
from services.content_manager.records import ContentRecord
from services.gateway import content_views as views
from services.gateway.errors import seed_timestamp

BAD_TYPE = "The resourceType is not one of Active, MSP, or Static."


def refused(call, *args, **kwargs) -> ContentError:
    with pytest.raises(ContentError) as caught:
        call(*args, **kwargs)
    return caught.value


@pytest.mark.parametrize(
    "path", ["add.wl", "apps/math/add.wl", "a b/ü.txt", ".hidden", "x/.applicationserver/info", "x" * 1024]
)
def test_good_paths(path: str) -> None:
    assert views.check_path(path) == path


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("", "it is empty"),
        ("/etc/passwd", "it starts with /"),
        ("a/../b", "segment"),
        ("..", "segment"),
        ("a/./b", "segment"),
        ("a//b", "segment"),
        ("a/", "segment"),
        ("a\nb", "control characters"),
        ("a\x00b", "control characters"),
        ("a\x7fb", "control characters"),
        ("x" * 1025, "longer than 1024 bytes"),
        ("é" * 513, "longer than 1024 bytes"),  # 1026 bytes in UTF-8
        (".applicationserver/info", "reserved"),
    ],
)
def test_bad_paths_are_400(path: str, reason: str) -> None:
    error = refused(views.check_path, path)
    assert error.status == 400 and reason in error.message


def test_a_missing_path_is_its_own_message() -> None:
    assert refused(views.check_path, None).message == "The resourcePath is required."
    assert refused(views.check_path, 5).message == "The resourcePath must be a string."


@pytest.mark.parametrize("text", ["{", "not json", "[1, 2]", '"add.wl"', "null", ""])
def test_resource_info_must_be_a_json_object(text: str) -> None:
    error = refused(views.parse_resource_info, text)
    assert (error.status, error.message) == (400, "Expected the request body in JSON format.")


def test_a_missing_resource_info_part() -> None:
    assert refused(views.parse_resource_info, None).message == "Required request part 'resourceInfo' is not present"


def test_unknown_resource_info_fields_are_refused() -> None:
    error = refused(views.parse_resource_info, json.dumps({"resourcePath": "a", "pool": "Public"}))
    assert error.status == 400 and "'pool'" in error.message


def info(**fields) -> dict:
    return {"resourcePath": "add.wl", "resourceType": "Active", "poolName": "Public", **fields}


def test_full_settings_with_the_seeds_defaults() -> None:
    path, settings = views.full_settings(info())
    assert path == "add.wl"
    assert settings == ResourceSettings(resource_type="Active", mime_type="Automatic", pool_name="Public", timeout=None)
    assert rules.effective_timeout(settings) == 30
    _, explicit = views.full_settings(info(timeout=90, mimeType="text/html; charset=utf-8"))
    assert rules.effective_timeout(explicit) == 90 and explicit.mime_type == "text/html; charset=utf-8"


@pytest.mark.parametrize("value", [None, "Passive", "active", "Active ", 1, ["Active"], {"x": 1}])
def test_a_wrong_or_null_resource_type(value) -> None:
    assert refused(views.full_settings, info(resourceType=value)).message == BAD_TYPE
    missing = info()
    del missing["resourceType"]
    assert refused(views.full_settings, missing).message == BAD_TYPE


def test_pool_name_is_required_unless_static() -> None:
    message = "The poolName is required unless the resourceType is Static."
    assert refused(views.full_settings, info(poolName=None)).message == message
    assert refused(views.full_settings, info(resourceType="MSP", poolName=None)).message == message
    _, static = views.full_settings(info(resourceType="Static", poolName=None))
    assert static.pool_name is None
    assert refused(views.full_settings, info(poolName="  ")).status == 400


@pytest.mark.parametrize("value", [0, -1, 1.5, "30", True, 7 * 24 * 3600 + 1])
def test_bad_timeouts(value) -> None:
    assert "timeout" in refused(views.full_settings, info(timeout=value)).message


@pytest.mark.parametrize("value", ["html", "text/html\r\nX-Evil: 1", 5, "a/b c", ""])
def test_bad_mime_types(value) -> None:
    assert "mimeType" in refused(views.full_settings, info(mimeType=value)).message


def test_put_body_path_must_equal_the_url_path() -> None:
    assert refused(views.full_settings, info(), url_path="addOne.wl").message == "resourcePath cannot be modified"
    assert views.full_settings(info(), url_path="add.wl")[0] == "add.wl"


def test_patch_names_what_it_changes() -> None:
    patch = views.settings_patch({"resourcePath": "add.wl", "timeout": None}, url_path="add.wl")
    assert patch == ResourceSettingsPatch(timeout=None, given=("timeout",))
    assert views.settings_patch({"resourcePath": "add.wl"}, url_path="add.wl").given == ()
    assert refused(views.settings_patch, {"timeout": 3}, url_path="add.wl").message == "The resourcePath is required."
    moved = {"resourcePath": "addNew.wl"}
    assert refused(views.settings_patch, moved, url_path="add.wl").message == "resourcePath cannot be modified"
    null_type = {"resourcePath": "add.wl", "resourceType": None}
    assert refused(views.settings_patch, null_type, url_path="add.wl").message == BAD_TYPE


def test_patched_merges_and_checks_the_whole() -> None:
    current = {"resource_type": "Static", "mime_type": "Automatic", "pool_name": None, "timeout": 5}
    to_msp = ResourceSettingsPatch(resource_type="MSP", pool_name="MSP", given=("resource_type", "pool_name"))
    assert rules.patched(current, to_msp).model_dump() == {**current, "resource_type": "MSP", "pool_name": "MSP"}
    only_type = ResourceSettingsPatch(resource_type="Active", given=("resource_type",))
    assert refused(rules.patched, current, only_type).status == 400


@pytest.mark.parametrize(
    ("mime_type", "names", "expected"),
    [
        ("Automatic", ("apps/math/add.wl", None), "application/vnd.wolfram.mathematica.package"),
        ("Automatic", ("site/index.html", None), "text/html"),
        ("Automatic", ("img/logo.PNG", None), "image/png"),
        ("Automatic", ("noext", "upload.css"), "text/css"),
        ("Automatic", ("noext", None), "application/octet-stream"),
        ("text/plain", ("index.html", None), "text/plain"),
    ],
)
def test_content_type(mime_type: str, names: tuple, expected: str) -> None:
    assert views.content_type(mime_type, *names) == expected


@pytest.mark.parametrize("name", ["a/b", "..", ".", "x\ny", "x" * 256])
def test_data_names_are_plain_file_names(name: str) -> None:
    assert refused(views.check_name, name).status == 400


def test_data_name_may_be_absent() -> None:
    assert views.check_name(None) is None and views.check_name("") is None
    assert views.check_name("answer.json") == "answer.json"


def test_seed_timestamp_format() -> None:
    moment = datetime(2019, 2, 8, 18, 29, 49, 597123, tzinfo=UTC)
    assert seed_timestamp(moment) == "2019-02-08T18:29:49.597+0000"
    assert seed_timestamp(datetime(2019, 2, 8, 18, 29, 49, tzinfo=UTC)) == "2019-02-08T18:29:49.000+0000"


def test_who_may_read_and_change() -> None:
    item = ContentRecord.from_document({"id": "i", "owner": "steve", "granted_to": ["host-1"]})
    assert item.may_read(user="steve", admin=False, resource_id=None)
    assert item.may_read(user="admin", admin=True, resource_id=None)
    assert item.may_read(user="agent:host-1", admin=False, resource_id="host-1")
    assert not item.may_read(user="agent:host-2", admin=False, resource_id="host-2")
    assert not item.may_read(user="alice", admin=False, resource_id=None)
    assert item.may_change(user="steve", admin=False) and item.may_change(user="x", admin=True)
    assert not item.may_change(user="agent:host-1", admin=False)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("add.wl", "add.wl"),
        ("../../etc/cron.d/evil", "evil"),
        ("C:\\Users\\me\\input.csv", "input.csv"),
        ("dir/", None),
        ("..", None),
        ("a\nb", None),
        (None, None),
        ("", None),
    ],
)
def test_an_uploaded_file_name_keeps_only_a_plain_last_segment(raw, expected) -> None:
    assert views.upload_file_name(raw) == expected
