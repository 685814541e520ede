"""Write the RabbitMQ definitions directory that deploy/rabbitmq/rabbitmq.conf imports at boot.

    RABBITMQ_USER=skybus RABBITMQ_PASSWORD=... \
    RABBITMQ_ADMIN_USER=skybus-admin RABBITMQ_ADMIN_PASSWORD=... \
        python3 seed_users.py OUT_DIR [--topology definitions.json]

writes ``OUT_DIR/10-users.json`` (passwords stored as salted SHA-256 hashes) with two users:

* ``RABBITMQ_USER``, the **services'** user: every permission on the vhost, but no tag, so no
  management API and no say over other users. Agents never get it.
* ``RABBITMQ_ADMIN_USER``, the management API administrator that the resource manager alone uses
  (``SKYBUS_BROKER_ADMIN_URL``) to give each agent a broker user of its own and revoke it. It has
  no permission on the vhost: it cannot publish or consume.

Given ``--topology``, it copies that file to ``OUT_DIR/00-topology.json``.
The credentials come from the environment so that none is ever committed. Standard library only:
Docker Compose runs it in a bare python image before the broker starts.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import secrets
import shutil
import sys
from pathlib import Path


def rabbitmq_password_hash(password: str) -> str:
    """The ``rabbit_password_hashing_sha256`` format: base64(salt + sha256(salt + password)), 4-byte salt."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode("utf-8")).digest()).decode("ascii")


def users_definitions(user: str, password: str, admin: str, admin_password: str, vhost: str) -> dict[str, object]:
    def one(name: str, secret: str, tags: list[str]) -> dict[str, object]:
        return {
            "name": name,
            "password_hash": rabbitmq_password_hash(secret),
            "hashing_algorithm": "rabbit_password_hashing_sha256",
            "tags": tags,
        }

    return {
        "users": [one(user, password, []), one(admin, admin_password, ["administrator"])],
        "permissions": [{"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--topology", type=Path, help="definitions.json to copy in as 00-topology.json")
    args = parser.parse_args()

    user = os.environ.get("RABBITMQ_USER", "")
    password = os.environ.get("RABBITMQ_PASSWORD", "")
    admin = os.environ.get("RABBITMQ_ADMIN_USER", "")
    admin_password = os.environ.get("RABBITMQ_ADMIN_PASSWORD", "")
    vhost = os.environ.get("RABBITMQ_VHOST", "/")
    if not user or not password or not admin or not admin_password:
        print(
            "seed_users.py: set RABBITMQ_USER, RABBITMQ_PASSWORD, RABBITMQ_ADMIN_USER and RABBITMQ_ADMIN_PASSWORD",
            file=sys.stderr,
        )
        return 2
    if "guest" in (password, admin_password) or admin == user or admin_password == password:
        print("seed_users.py: choose real passwords (not 'guest'), and two users, not one", file=sys.stderr)
        return 2

    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.topology:
        json.loads(args.topology.read_text())  # refuse a broken file here rather than at broker boot
        shutil.copyfile(args.topology, args.out_dir / "00-topology.json")
    users_file = args.out_dir / "10-users.json"
    users_file.write_text(json.dumps(users_definitions(user, password, admin, admin_password, vhost), indent=2) + "\n")
    # The broker runs as another user and must read the file; the hash is salted and the
    # directory is mounted into the broker only.
    users_file.chmod(0o644)
    print(f"seed_users.py: wrote {users_file}: services' user {user!r} on vhost {vhost!r}, administrator {admin!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
