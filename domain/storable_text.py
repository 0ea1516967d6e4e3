"""What PostgreSQL can store as text: UTF-8 without NUL characters."""


def is_storable(text: str) -> bool:
    """False for NUL characters and lone surrogates (which JSON lets a client send)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
