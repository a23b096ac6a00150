"""The prices table: the price of each model pattern."""

from __future__ import annotations

import time

from sqlalchemy import delete, insert, select, update

from ..records import (
    PRICE_FIELDS,
    InvalidInputError,
    KeyNotFoundError,
    Price,
    PriceError,
    check_price,
)
from .connection import Connector
from .notify import keys_changed
from .schema import prices

_PRICE_COLUMNS = (prices.c.pattern, *(prices.c[field] for field in PRICE_FIELDS))


class PriceQueries(Connector):
    """Queries of the prices table."""

    async def list_prices(self) -> list[Price]:
        async with self._read() as conn:
            rows = (await conn.execute(select(*_PRICE_COLUMNS).order_by(prices.c.pattern))).all()
        return [Price(*row) for row in rows]

    async def set_price(self, price: Price) -> Price:
        """Add or replace the price of a model pattern. Usage already recorded keeps the
        cost it was given; requests that start from now on pay this."""
        try:
            price = check_price(price)
        except PriceError as exc:
            raise InvalidInputError(str(exc)) from None
        values = {field: getattr(price, field) for field in PRICE_FIELDS}
        async with self._write() as conn:
            found = await conn.execute(
                update(prices)
                .where(prices.c.pattern == price.pattern)
                .values(**values, updated_at=time.time())
            )
            if found.rowcount == 0:
                await conn.execute(
                    insert(prices).values(pattern=price.pattern, **values, updated_at=time.time())
                )
            await keys_changed(conn)  # gateways reload prices with keys
        return price

    async def remove_price(self, pattern: str) -> None:
        async with self._write() as conn:
            result = await conn.execute(delete(prices).where(prices.c.pattern == pattern))
            if result.rowcount == 0:
                raise KeyNotFoundError(f"no price for {pattern!r}")
            await keys_changed(conn)
