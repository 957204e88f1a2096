"""``feint credits …``: the ledger for operators."""

from __future__ import annotations

import typer

credits_app = typer.Typer(help="The credits ledger: accounts, grants, balances, audit.", no_args_is_help=True)
