"""The development secret: what signs tokens when AUTH_SECRET is not set (`make run`).

Kept in the data directory beside the embedded database (mode 0600), so tokens survive a
restart and `make token` signs with the secret the server uses. Never read or written when
AUTH_SECRET is set.
"""

import os
import secrets
from pathlib import Path

SECRET_FILE_NAME = "development-secret"


def development_secret_path(data_dir: Path) -> Path:
    return data_dir / SECRET_FILE_NAME


def load_or_create_development_secret(data_dir: Path) -> str:
    """The secret kept in `data_dir`, created (owner-only) on first use."""
    path = development_secret_path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: of two processes starting at once, one creates and both read the same.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)  # tighten one copied in with looser permissions
        secret = path.read_text(encoding="utf-8").strip()
        if secret:
            return secret
        raise RuntimeError(f"{path} is empty: remove it (make reset) to start over") from None
    secret = secrets.token_urlsafe(32)
    with os.fdopen(descriptor, "w", encoding="utf-8") as written:
        written.write(secret + "\n")
    return secret
