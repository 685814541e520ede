"""The host-side pieces of a container: root filesystems from tarballs, bubblewrap's flags."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from schemas.pool import ContainerSpec
from services.agent.sandbox import bwrap_argv, executable_in, extract_rootfs, nsenter_argv


def tarball(path: Path, *members: tuple[str, str | bytes]) -> Path:
    """A tarball of files (bytes) and symlinks (``"-> target"``)."""
    with tarfile.open(path, "w") as archive:
        for name, content in members:
            info = tarfile.TarInfo(name)
            if isinstance(content, str):
                info.type, info.linkname = tarfile.SYMTYPE, content.removeprefix("-> ")
                archive.addfile(info)
            else:
                info.size = len(content)
                archive.addfile(info, io.BytesIO(content))
    return path


def test_absolute_links_mean_the_containers_root(tmp_path: Path) -> None:
    source = tarball(
        tmp_path / "root.tar",
        ("bin/busybox", b"\x7fELF"),
        ("bin/sh", "-> /bin/busybox"),
        ("./usr/bin/env", "-> /bin/busybox"),
        ("etc/hostname", b"box\n"),
        ("top", "-> /../.."),  # in the container, /.. is /
        ("top/inside", b"in"),
    )
    root = tmp_path / "root"
    extract_rootfs(source, root)
    assert os.readlink(root / "bin/sh") == "busybox"
    assert os.readlink(root / "usr/bin/env") == "../../bin/busybox"
    assert (root / "usr/bin/env").read_bytes() == b"\x7fELF"  # resolved inside the root, not the host's
    assert executable_in(str(root), "sh") == "/bin/sh"
    assert executable_in(str(root), "/usr/bin/env") == "/usr/bin/env"
    assert executable_in(str(root), "python3") is None
    assert (root / "inside").read_bytes() == b"in" and not (tmp_path / "inside").exists()


@pytest.mark.parametrize(
    "members",
    [
        [("../escaped", b"out")],
        [("etc/../../escaped", b"out")],
        [("up", "-> ../../.."), ("up/escaped", b"out")],
        [("loop", "-> /loop"), ("loop/escaped", b"out")],
    ],
)
def test_nothing_is_written_outside_the_root(tmp_path: Path, members: list) -> None:
    source = tarball(tmp_path / "evil.tar", *members)
    with pytest.raises((tarfile.TarError, OSError)):
        extract_rootfs(source, tmp_path / "jail" / "root")
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "jail" / "escaped").exists()


def test_a_container_has_its_own_namespaces_unless_it_shares_the_hosts_network(tmp_path: Path) -> None:
    spec = ContainerSpec(id="box", filesystems=["/srv/data:/data:ro", "/var/log:/logs"])
    argv = bwrap_argv("bwrap", spec, tmp_path / "root", 7)
    assert argv[:6] == ["bwrap", "--unshare-pid", "--unshare-uts", "--unshare-ipc", "--hostname", "box"]
    assert "--unshare-net" in argv and ["--bind", str(tmp_path / "root"), "/"] == argv[7:10]
    assert " --ro-bind /srv/data /data --bind /var/log /logs " in " ".join(argv)
    assert argv[-5:] == ["--info-fd", "7", "--", "sleep", "2147483647"]

    shared = bwrap_argv("bwrap", ContainerSpec(id="box", hostname="web", hostNetworking=True), None, 7)
    assert "--unshare-net" not in shared and shared[5] == "web"
    assert " --ro-bind /usr /usr " in " ".join(shared) and "--bind" not in shared


def test_nsenter_opens_the_working_directory_inside_the_container() -> None:
    argv = nsenter_argv(42, host_networking=False, pwd="/srv", command=["/bin/sh", "-c", "pwd"])
    assert argv == [
        "nsenter", "--target=42", "--pid", "--mount", "--uts", "--ipc", "--net",
        "--root", "--wd=/proc/42/root/srv", "--",
        "setpriv", "--bounding-set=-all", "--inh-caps=-all", "--ambient-caps=-all", "--no-new-privs", "--",
        "/bin/sh", "-c", "pwd",
    ]  # fmt: skip
    assert "--net" not in nsenter_argv(42, host_networking=True, pwd="", command=["true"])
