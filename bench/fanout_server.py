"""`python -m gql serve` with another uvicorn websocket implementation (bench/fanout.py --ws).

    python -m bench.fanout_server lean | websockets-sansio | websockets | wsproto

Everything else is `gql serve`'s own: only the `ws` entry of its websocket_server_options is
replaced, so the implementations can be compared side by side on one server build.
`wsproto` needs the wsproto package, which wa-inbox does not install.
"""

import sys
from typing import Any

import gql.__main__ as cli
from gql.live_protocol import LeanWebSocketsProtocol
from gql.settings import Settings

IMPLEMENTATIONS: dict[str, Any] = {
    "lean": LeanWebSocketsProtocol,
    "websockets-sansio": "websockets-sansio",
    "websockets": "websockets",
    "wsproto": "wsproto",
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in IMPLEMENTATIONS:
        raise SystemExit(f"usage: python -m bench.fanout_server {'|'.join(IMPLEMENTATIONS)}")
    implementation = IMPLEMENTATIONS[argv[0]]
    served = cli.websocket_server_options

    def options(settings: Settings) -> dict[str, Any]:
        return {**served(settings), "ws": implementation}

    cli.websocket_server_options = options
    return cli.main(["serve"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
