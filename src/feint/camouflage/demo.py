"""A small shop the gateway protects under `feint up` when ``FEINT_UPSTREAM_URL`` is unset.

It exists so that a bare machine shows the whole path (client → gateway → application) without
anything else installed; it is not part of any production deployment.
"""

from __future__ import annotations

import html

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

PRODUCTS = (
    {"id": 1, "name": "Espresso beans, 1 kg", "price_cents": 2400},
    {"id": 2, "name": "Pour-over kettle", "price_cents": 5900},
    {"id": 3, "name": "Ceramic cup", "price_cents": 1200},
)


async def home(_: Request) -> Response:
    items = "".join(
        f"<li>{html.escape(str(p['name']))}: {int(str(p['price_cents'])) / 100:.2f} EUR</li>" for p in PRODUCTS
    )
    return HTMLResponse(
        "<!doctype html><html><head><title>Demo shop</title></head><body>"
        f"<h1>Demo shop</h1><p>Protected by Feint.</p><ul>{items}</ul>"
        '<p><a href="/login">Sign in</a></p></body></html>'
    )


async def products(_: Request) -> Response:
    return JSONResponse({"products": list(PRODUCTS)})


async def login(request: Request) -> Response:
    if request.method == "POST":
        return JSONResponse({"error": "invalid credentials"}, status_code=401)
    return HTMLResponse(
        '<!doctype html><html><body><form method="post"><input name="user"><input name="password" type="password">'
        "<button>Sign in</button></form></body></html>"
    )


def create() -> Starlette:
    return Starlette(
        routes=[
            Route("/", home),
            Route("/api/products", products),
            Route("/login", login, methods=["GET", "POST"]),
        ]
    )
